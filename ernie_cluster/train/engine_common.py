"""What both engines share: the step result, optimizer-state conversion, seeding."""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from .checkpoint import OPT_FORMAT

ACC_KINDS = ("moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc")
ACC_RE = re.compile(r"^(?P<param>.+)_(?P<kind>moment1|moment2|beta1_pow_acc|beta2_pow_acc)_\d+$")


@dataclass
class StepResult:
    loss: float
    lm_loss: float
    sop_loss: float
    loss_scale: Optional[float] = None
    finite: bool = True


def gpu_device_id(dist) -> int:
    """The GPU this trainer drives: paddle.distributed.launch's FLAGS_selected_gpus, else its local rank."""
    return int((os.environ.get("FLAGS_selected_gpus") or str(dist.local_rank)).split(",")[0])


def step_seed(base_seed: int, rank: int, step: int) -> int:
    """Paddle's RNG (dropout) is re-seeded before every step from (seed, rank, step)."""
    return zlib.crc32(f"{base_seed}:{rank}:{step}".encode()) & 0x7FFFFFFF


def dropout_seed(base_seed: int, rank: int, step: int, index: int) -> int:
    """Seed of the static engine's `index`-th dropout seed generator (recompute) at `step`."""
    return zlib.crc32(f"{base_seed}:{rank}:{step}:dropout{index}".encode()) & 0x7FFFFFFF


def paddle_seed_scheme(base_seed: int, rank: int) -> Dict[str, Any]:
    return {"scheme": "crc32(seed:rank:step)", "seed": int(base_seed), "rank": int(rank)}


def empty_optimizer_state() -> Dict[str, Any]:
    return {"format": OPT_FORMAT, "accumulators": {}, "loss_scaling": None, "extra": {}}


def mean_results(results: List[StepResult]) -> StepResult:
    n = max(1, len(results))
    loss = sum(r.loss for r in results) / n
    lm = sum(r.lm_loss for r in results) / n
    sop = sum(r.sop_loss for r in results) / n
    finite = all(r.finite for r in results) and bool(np.isfinite([loss, lm, sop]).all())
    return StepResult(loss, lm, sop, results[-1].loss_scale if results else None, finite)
