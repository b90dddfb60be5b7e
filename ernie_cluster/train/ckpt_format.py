"""The checkpoint format, in one place: its layout, file names, versions, and what each file holds.

Layout (``RunDir.checkpoints``)::

    checkpoints/
      model_last -> step_000001000        relative symlink to the newest complete checkpoint
      step_000000500/                     kept: the newest `train.keep_checkpoints` complete ones
      step_000001000/
        model_state.pdparams              {structured name: numpy array}; tied aliases included
        optimizer.pdopt                   {"format", "accumulators": {canonical name: {moment1, moment2,
                                           beta1_pow_acc, beta2_pow_acc}}, "loss_scaling", "extra"}
        trainer_state.json                step, consumed_samples, LR schedule state, spec sha256,
                                           compat key, engine, world size, versions
        rng_rank00000.pkl ...             per rank: python `random` and numpy global states, paddle seed scheme
        MANIFEST.json                     written last: size and checksum of every other file
      .tmp.step_000001500/                a save in progress (never read; removed by the next save)

The .pdparams/.pdopt/.pkl files are pickles (protocol 5 since asynchronous checkpoints: arrays are written
from their own memory; protocol 4 before, as paddle.save writes): `paddle.load(path, return_numpy=True)` and
`ckpt_io.read_pickle` read both.

Standard library only at import (numpy is imported where RNG state is captured), so submit-side
readers such as ``runs.py`` use it without paddle or numpy. Writing is in ``ckpt_write``, finding,
verifying and loading in ``ckpt_read``; ``checkpoint`` gathers the public names.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional

FORMAT_VERSION = 1                        # MANIFEST.json and trainer_state.json "format"
OPT_FORMAT = "ernie_cluster.adamw.v1"     # optimizer.pdopt "format"
MODEL_FILE = "model_state.pdparams"
OPT_FILE = "optimizer.pdopt"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "MANIFEST.json"
LAST_LINK = "model_last"
STEP_GLOB = "step_*"
STEP_RE = re.compile(r"^step_(\d{9})$")
TMP_PREFIX = ".tmp."                      # a save in progress: .tmp.step_<N>


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pkl"


class CheckpointError(RuntimeError):
    """A checkpoint problem the user must act on (the trainer exits non-zero, no requeue loop)."""


class IncompatibleCheckpoint(CheckpointError):
    pass


def json_default(obj: Any) -> Any:
    """JSON for the numpy scalars and paths a trainer state or compat key may hold."""
    import numpy as np

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
                        compat_key: Dict[str, Any], engine: str, world_size: int, dp_degree: int, nodes: int,
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
        "world_size": world_size, "dp_degree": dp_degree, "nodes": nodes, "accumulate_steps": accumulate_steps,
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
    import numpy as np

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
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
