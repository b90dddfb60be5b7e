"""What both engines share: the process-group interface, the step result, seeding; the optimizer-state
layout (its home is ckpt_format.py, the checkpoint format)."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

# The optimizer-state layout has its home in ckpt_format.py; re-exported for the engines.
from .ckpt_format import (ACC_KINDS, ACC_RE, LOSS_SCALING_KEYS, empty_optimizer_state, get_accumulator,  # noqa: F401
                         put_accumulator)


class Collective:
    """What the trainer and checkpointing need from the engine's process group (stop-flag agreement,
    barriers, evaluation sums); these single-process defaults are what one process needs."""

    def barrier(self) -> None:  # pragma: no cover - trivial
        pass

    def max_int(self, value: int) -> int:
        return int(value)

    def sum_floats(self, values):
        return [float(v) for v in values]


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


def mean_results(results: List[StepResult]) -> StepResult:
    n = max(1, len(results))
    loss = sum(r.loss for r in results) / n
    lm = sum(r.lm_loss for r in results) / n
    sop = sum(r.sop_loss for r in results) / n
    finite = all(r.finite for r in results) and bool(np.isfinite([loss, lm, sop]).all())
    return StepResult(loss, lm, sop, results[-1].loss_scale if results else None, finite)
