"""What a checkpoint holds: trainer_state.json, the engine-neutral optimizer state, per-rank RNG state.

Part of the checkpoint format (``checkpoint.py`` describes the layout and re-exports these names);
the file names and versions are in ``ckpt_names``.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .ckpt_names import FORMAT_VERSION, OPT_FORMAT


class CheckpointError(RuntimeError):
    """A checkpoint problem the user must act on (the trainer exits non-zero, no requeue loop)."""


class IncompatibleCheckpoint(CheckpointError):
    pass


def json_default(obj: Any) -> Any:
    """JSON for the numpy scalars and paths a trainer state or compat key may hold."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# ---------------------------------------------------------------------------
# trainer_state.json
# ---------------------------------------------------------------------------


def build_trainer_state(*, step: int, global_batch_size: int, lr_schedule: Dict[str, Any], spec_sha256: str,
                        compat_key: Dict[str, Any], engine: str, world_size: int, dp_degree: int,
                        accumulate_steps: int, model_config: Dict[str, Any], max_steps: int,
                        starting_weights: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The trainer_state.json of a checkpoint at `step` (versions and the save time filled in here)."""
    import paddle

    try:
        import paddlenlp

        nlp_version = paddlenlp.__version__
    except Exception:  # noqa: BLE001
        nlp_version = None
    return {
        "format": FORMAT_VERSION, "step": step, "consumed_samples": step * global_batch_size,
        "global_batch_size": global_batch_size, "lr_schedule": lr_schedule,
        "spec_sha256": spec_sha256, "compat_key": compat_key, "engine": engine,
        "world_size": world_size, "dp_degree": dp_degree, "accumulate_steps": accumulate_steps,
        "paddle_version": paddle.__version__, "paddlenlp_version": nlp_version, "model_config": model_config,
        "saved_at": time.time(), "max_steps": max_steps, "starting_weights": starting_weights,
    }


# ---------------------------------------------------------------------------
# optimizer.pdopt: the engine-neutral AdamW state
# ---------------------------------------------------------------------------

# Per parameter (by structured/canonical name): these four accumulators.
ACC_KINDS = ("moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc")
# A static program's accumulator variable: <parameter variable>_<kind>_<n>.
ACC_RE = re.compile(r"^(?P<param>.+)_(?P<kind>moment1|moment2|beta1_pow_acc|beta2_pow_acc)_\d+$")
# AMP dynamic loss scaling ("loss_scaling" in the state): scale, good and bad step counters.
LOSS_SCALING_KEYS = ("loss_scaling", "num_good_steps", "num_bad_steps")


def empty_optimizer_state() -> Dict[str, Any]:
    """{"format", "accumulators": {name: {kind: array}}, "loss_scaling": None | {key: array}, "extra": {}}."""
    return {"format": OPT_FORMAT, "accumulators": {}, "loss_scaling": None, "extra": {}}


def put_accumulator(state: Dict[str, Any], name: str, kind: str, value: Any) -> None:
    state["accumulators"].setdefault(name, {})[kind] = value


def get_accumulator(state: Dict[str, Any], name: str, kind: str) -> Any:
    """The saved `kind` accumulator of parameter `name`; KeyError when the state lacks it."""
    value = state.get("accumulators", {}).get(name, {}).get(kind)
    if value is None:
        raise KeyError(f"optimizer state lacks {kind} of {name}")
    return value


# ---------------------------------------------------------------------------
# rng_rank<r>.pkl (per rank)
# ---------------------------------------------------------------------------


def capture_rng(rank: int, paddle_seed_scheme: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "rank": rank,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        # Paddle's generator state cannot be serialised faithfully (its pickle keeps only
        # the seed), so the trainers re-seed paddle at every step from (seed, rank, step):
        # this scheme *is* the paddle RNG state.
        "paddle": dict(paddle_seed_scheme),
    }


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
