"""The DAPT benchmark's figures (bench/bench_dapt.py): where a loss curve reaches a target, and the plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple


def first_reaching(curve: Sequence[Tuple[int, float]], target: float) -> Optional[int]:
    """The first step whose loss is <= target, or None."""
    for step, loss in curve:
        if loss <= target:
            return step
    return None


def interpolated_crossing(curve: Sequence[Tuple[int, float]], target: float) -> Optional[float]:
    """The step where the piecewise-linear curve first goes down to target, or None."""
    for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
        if l0 <= target:
            return float(s0)
        if l1 <= target:
            return s0 + (s1 - s0) * (l0 - target) / (l0 - l1)
    return float(curve[-1][0]) if curve and curve[-1][1] <= target else None


def at_step(curve: Sequence[Tuple[int, float]], step: int) -> Tuple[int, float]:
    """The evaluated point nearest to `step` (ties: the earlier one)."""
    return min(curve, key=lambda p: (abs(p[0] - step), p[0]))


def plot(path: Path, dom_a, dom_b, gen_a, gen_b, target: float, reach: Optional[int], general_loss: float,
         domain_steps: int, general_steps: int, uniform: float, goal_fraction: float) -> None:
    """bench/results/dapt.png: both domain curves with the goal, and what (a) forgets of the general corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(*zip(*dom_a), "o-", ms=3, color="tab:blue", label="(a) DAPT: from the general model")
    ax1.plot(*zip(*dom_b), "s-", ms=3, color="tab:orange", label="(b) from random weights")
    ax1.axhline(target, color="tab:orange", ls=":", lw=1, label=f"(b) at step {domain_steps}: {target:.3f}")
    if reach is not None:
        ax1.axvline(reach, color="tab:blue", ls=":", lw=1, label=f"(a) reaches it at step {reach}")
    ax1.axvline(domain_steps * goal_fraction, color="grey", ls="--", lw=0.8, label="1/3 of the steps")
    ax1.set_xlabel("steps on the domain corpus")
    ax1.set_ylabel("domain validation MLM loss")
    ax1.set_title("domain: clinical notes")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(*zip(*gen_a), "o-", ms=3, color="tab:blue", label="(a) DAPT")
    ax2.plot(*zip(*gen_b), "s-", ms=3, color="tab:orange", label="(b) from random weights")
    ax2.axhline(general_loss, color="tab:green", ls=":", lw=1,
                label=f"general model ({general_steps} general steps): {general_loss:.3f}")
    ax2.axhline(uniform, color="grey", ls="--", lw=0.8, label=f"uniform guess over the vocab: ln V = {uniform:.2f}")
    ax2.set_xlabel("steps on the domain corpus")
    ax2.set_ylabel("general validation MLM loss")
    ax2.set_title("general corpus: what (a) forgets")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"Tiny ERNIE ({general_steps} general steps, then {domain_steps} domain steps), "
                 "eval on fixed validation batches", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
