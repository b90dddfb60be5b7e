"""What both engines share: the process-group interface, the step result, seeding; the optimizer-state
layout (its home is ckpt_format.py, the checkpoint format)."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

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


class _HostDLPack:
    """A host tensor as numpy.from_dlpack takes it (paddle 2.6's tensor has `_to_dlpack` but no `__dlpack__`)."""

    def __init__(self, tensor):
        self._tensor = tensor

    def __dlpack__(self, stream=None):
        return self._tensor._to_dlpack()

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


class HostViews:
    """An engine's state as numpy views of its live host tensors (no copy), for the asynchronous checkpoint's copy
    into kept buffers (`ckpt_async.HostBuffers`): what `state_views()` returns on a CPU.

    `tree(build)` calls `build(view)`, where `view(key, source)` is the view of the tensor `source()` returns (a
    DenseTensor). A view holds the memory it shows (DLPack), so it stays valid; it shows the live values while the
    tensor keeps that memory, which the optimizers' in-place updates do. While every tensor still has the memory
    its view was made from, the same tree object comes back (checked per tensor, a pointer each); otherwise the
    tree is built again and a tensor with new memory gets a new view."""

    def __init__(self) -> None:
        self._views: Dict[Any, Tuple[Callable[[], Any], int, np.ndarray]] = {}  # key -> (source, address, view)
        self._tree: Any = None

    def tree(self, build: Callable[[Callable[[Any, Callable[[], Any]], np.ndarray]], Any]) -> Any:
        if self._tree is not None and all(source()._ptr() == address for source, address, _ in self._views.values()):
            return self._tree
        self._tree = build(self._view)
        return self._tree

    def _view(self, key: Any, source: Callable[[], Any]) -> np.ndarray:
        tensor = source()
        address = tensor._ptr()
        hit = self._views.get(key)
        if hit is None or hit[1] != address:
            hit = self._views[key] = (source, address, np.from_dlpack(_HostDLPack(tensor)))
        return hit[2]
