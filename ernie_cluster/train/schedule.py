"""The learning-rate schedule, shared by both engines: a pure function of the step.

Formula parity with PaddleNLP's `LinearAnnealingWithWarmupDecay` /
`CosineAnnealingWithWarmupDecay` (model_zoo/ernie-1.0):

* warmup: ``max_lr * s / warmup_steps`` for ``s <= warmup_steps`` (``warmup_steps =
  warmup_rate * max_steps``, a float as in the reference),
* then ``linear``: straight line from ``max_lr`` (at warmup end) to ``min_lr`` at
  ``decay_steps``, flat ``min_lr`` after; ``cosine``: half cosine over the same span;
  ``none``: ``max_lr`` after warmup.

One deliberate difference: the update that takes the model from step ``s`` to ``s+1``
uses ``learning_rate(s + 1)``. The reference uses ``f(s)`` on a fresh start (so its
first update runs at LR 0 whenever there is warmup) and ``f(s + 1)`` after a resume
(its scheduler is rebuilt with ``last_epoch=global_step`` and steps once in the
constructor). Here the value only depends on the step, so a resumed run sees exactly
the LR the uninterrupted run saw. The schedule's whole state is the step number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    max_lr: float
    min_lr: float
    warmup_steps: float
    decay_steps: int
    style: str = "linear"  # linear | cosine | none

    @classmethod
    def from_spec(cls, spec) -> "LRSchedule":
        t = spec.train
        return cls(
            max_lr=float(t.max_lr),
            min_lr=float(t.min_lr),
            warmup_steps=float(t.warmup_rate) * float(t.max_steps),
            decay_steps=int(spec.decay_steps),
            style=t.lr_decay_style,
        )

    def __call__(self, step: int) -> float:
        return learning_rate(step, self)

    def for_update(self, completed_steps: int) -> float:
        """LR of the update that follows `completed_steps` finished steps."""
        return learning_rate(completed_steps + 1, self)

    def state(self, completed_steps: int) -> dict:
        return {
            "style": self.style,
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "step": int(completed_steps),
            "last_lr": self.for_update(completed_steps - 1) if completed_steps > 0 else 0.0,
        }


def learning_rate(step: int, sched: LRSchedule) -> float:
    s = float(step)
    if sched.warmup_steps > 0 and s <= sched.warmup_steps:
        return sched.max_lr * s / sched.warmup_steps
    if sched.style == "none":
        return sched.max_lr
    if s > sched.decay_steps:
        return sched.min_lr
    span = float(sched.decay_steps) - sched.warmup_steps
    if span <= 0:
        return sched.min_lr
    ratio = (s - sched.warmup_steps) / span
    if sched.style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    elif sched.style == "linear":
        coeff = 1.0 - ratio
    else:
        raise ValueError(f"unknown lr_decay_style {sched.style!r}")
    return sched.min_lr + coeff * (sched.max_lr - sched.min_lr)
