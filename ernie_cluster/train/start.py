"""Where training starts: the newest complete compatible checkpoint (rank 0 chooses, all ranks agree),
else the model directory's weights (every tensor, verified), else random weights (model.random_init).

What step 0 started from (`starting`, a dict) is recorded in every checkpoint's trainer_state.json
("starting_weights"), so a resumed run still says where it began.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .checkpoint import (CheckpointError, CheckpointInfo, CheckpointManager, IncompatibleCheckpoint, find_latest,
                         restore_rng, step_dir_name, verify_checkpoint)

log = logging.getLogger("ernie_cluster.train")

# Rank 0's answer in the one max all-reduce that chooses the checkpoint (a step >= 0 means "resume it").
NO_CHECKPOINT = -1
REFUSED = -2
NOT_RANK0 = -(2 ** 62)


def agree_on_checkpoint(ckpt_dir: Path, compat_key: Dict[str, Any], dist, collective) -> Optional[CheckpointInfo]:
    """The checkpoint every rank resumes from, or None for a fresh start.

    Rank 0 verifies fully and chooses (an incompatible newest checkpoint is refused on every rank), loading
    the candidate as it hashes it (`find_latest(load_rank=0)`: one pass, `resume` gets that state);
    the other ranks check that they see the same complete files (the file system must be shared).
    """
    choice = NOT_RANK0
    refusal: Optional[Exception] = None
    chosen = None
    if dist.rank == 0:
        try:
            chosen = find_latest(ckpt_dir, compat_key, load_rank=0)
            choice = chosen.step if chosen is not None else NO_CHECKPOINT
        except IncompatibleCheckpoint as exc:
            refusal, choice = exc, REFUSED
    choice = collective.max_int(choice)
    if choice == REFUSED:
        raise refusal if refusal is not None else CheckpointError(
            "rank 0 refused the newest checkpoint (incompatible spec); see its log")
    if choice < 0:
        return None
    if chosen is not None:  # rank 0 verified (and loaded) it a moment ago
        return chosen
    path = ckpt_dir / step_dir_name(choice)
    ok, reason, info = verify_checkpoint(path, full=False)
    if not ok or info is None:
        raise CheckpointError(f"checkpoint {path} chosen by rank 0 does not verify on rank {dist.rank}: "
                              f"{reason} (is {ckpt_dir} on a file system all nodes share?)")
    return info


def resume(info: CheckpointInfo, manager: CheckpointManager, engine, spec, rank: int,
           plan) -> Tuple[int, Optional[Dict[str, Any]]]:
    """Load the checkpoint's model, optimizer and RNG states into the engine; (step, what step 0 started from).

    The checkpoint may come from an attempt on another number of nodes (resources.nodes a range): its state is
    replicated, and the global batch (the compat key) is the same, so only the accumulation differs: logged."""
    loaded = manager.load(info)
    engine.set_model_state(loaded.model_state)
    engine.set_optimizer_state(loaded.optimizer)
    if loaded.rng is not None:
        restore_rng(loaded.rng)
    else:
        seed_host_rngs(spec.train.seed, rank)
    st = loaded.trainer_state
    step = int(st["step"])
    if st.get("engine") != engine.name:
        log.info("resuming a %s-engine checkpoint in the %s engine", st.get("engine"), engine.name)
    if st.get("spec_sha256") != spec.sha256():
        log.info("the spec changed since the checkpoint (compatible fields only)")
    log.info("resumed from %s: step %d, consumed samples %d", info.path, step, st.get("consumed_samples", -1))
    change = shape_change(st, plan, spec.resources.trainers_per_node)
    if change and rank == 0:
        log.info("%s", change)
    starting = st.get("starting_weights")
    if rank == 0 and isinstance(starting, dict):
        log.info("this run started from %s", describe_start(starting))
    return step, starting


def shape_change(trainer_state: Dict[str, Any], plan, trainers_per_node: int) -> Optional[str]:
    """'resumed on 2 nodes, was 3: accumulation 2 -> 3, dp 3 -> 2' when the checkpoint's attempt had another shape."""
    world = trainer_state.get("world_size")
    nodes = trainer_state.get("nodes") or (world // trainers_per_node if isinstance(world, int) else None)
    acc, dp = trainer_state.get("accumulate_steps"), trainer_state.get("dp_degree")
    if (nodes, acc, dp) == (plan.nodes, plan.accumulate_steps, plan.dp_degree):
        return None
    return (f"resumed on {plan.nodes} node{'s' if plan.nodes != 1 else ''}, was {nodes}: accumulation {acc} -> "
            f"{plan.accumulate_steps}, dp {dp} -> {plan.dp_degree} (global batch {plan.global_batch_size} kept)")


def seed_host_rngs(seed: int, rank: int) -> None:
    """python's and numpy's RNG of a rank that has no saved state (paddle's is re-seeded every step)."""
    import random

    import numpy as np

    random.seed(seed + rank)
    np.random.seed((seed + rank) % (2 ** 32))


def start_fresh(spec, engine, rank: int):
    """Seed python/numpy, then load the model directory's weights into the engine (or keep its random
    initialisation with model.random_init); (what step 0 starts from, the StartingWeightsReport or None)."""
    from .model import starting_weights

    t = spec.train
    seed_host_rngs(t.seed, rank)
    started = starting_weights(spec, engine.param_shapes(), fresh=engine.model_state)
    if started is None:
        log.info("random initialisation (model.random_init: true): architecture of %s, seed %d; no weights "
                 "are read", spec.model.model_name_or_path, t.seed)
        return {"random_init": True, "architecture": spec.model.model_name_or_path}, None
    weights, report = started
    engine.set_model_state(weights, strict=True)
    del weights
    verify_loaded(engine, report)
    log.info("initialised weights from %s: %s", spec.model.model_name_or_path, report.summary())
    for note in report.notes:
        log.info("starting weights: %s", note)
    if report.fresh_heads:
        log.warning("starting weights: %d pretraining head tensor(s) are not in %s and start from a fresh "
                    "initialisation (model.allow_missing_heads): %s", len(report.fresh_heads),
                    report.path, ", ".join(report.fresh_heads))
    return report.as_dict(), report


def verify_loaded(engine, report) -> None:
    """The engine's parameters must be the loaded tensors, bit for bit (the report's checksum; fresh heads aside)."""
    from ..weights import tensor_checksum
    from .model import ModelSetupError

    fresh = set(report.fresh_heads)
    got = tensor_checksum({k: v for k, v in engine.model_state().items() if k not in fresh})
    if got != report.checksum:
        raise ModelSetupError(f"the {engine.name} engine's parameters after loading {report.path} have sha256 "
                              f"{got[:16]}, the loaded tensors {report.checksum[:16]}: the weights did not arrive")


def describe_start(starting: Dict[str, Any]) -> str:
    if starting.get("random_init"):
        return f"random weights (model.random_init), architecture of {starting.get('architecture')}"
    fresh = starting.get("fresh_heads") or []
    return (f"{starting.get('path')} ({starting.get('layout')}, {starting.get('n_tensors')} tensors, sha256 "
            f"{str(starting.get('checksum'))[:16]}{f', {len(fresh)} fresh head tensors' if fresh else ''})")
