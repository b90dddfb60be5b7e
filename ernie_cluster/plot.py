"""`python -m ernie_cluster plot RUN`: one PNG of a run's loss and learning rate over steps, all attempts.

Read from the run directory only (no paddle, no VisualDL): rank 0's trainer log of every attempt
(`logs/attempt-<job>-<restart>/node0/workerlog.0`, lines `step N/M | loss X | ... | lr Y | ... | S samples/s`
and `valid at step N | loss X`), and `attempts.jsonl` for how each attempt ended. Marked: every attempt end
that was not `completed` (its cause and step, e.g. "signal @96"), every resume (the step the next attempt
started from), and the median samples/s of each attempt. matplotlib (Agg) is imported only when drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .progress import AttemptSeries, collect  # the log parsing, shared with `status` and the live console
from .rundir import RunDir


class PlotError(Exception):
    """Bad input for `plot`: not a run directory, or nothing logged yet (the CLI exits 2)."""


def marks_for(attempts: List[AttemptSeries]) -> List[Dict[str, Any]]:
    """The vertical lines: each attempt end that was not `completed`, and each resume of a later attempt."""
    marks: List[Dict[str, Any]] = []
    for i, a in enumerate(attempts):
        if i > 0:
            prev = attempts[i - 1].record
            step = a.resumed_from
            if step is None and a.train:
                step = a.train[0][0] - 1
            if step is None and prev is not None and prev.get("step") is not None:
                step = int(prev["step"])
            if step is not None:
                marks.append({"step": int(step), "kind": "resume", "label": f"resumed @{step}"})
        r = a.record
        if r is None or r.get("reason") == "completed":
            continue
        step = r.get("step")
        if step is None:
            step = a.train[-1][0] if a.train else None
        if step is None:
            continue
        kind = "requeue" if r.get("action") == "requeue" else str(r.get("reason") or "stopped")
        what = r.get("cause") or r.get("reason")
        if what == "signal" and r.get("signal"):
            what = f"{what} {r['signal']}"
        label = f"{what} @{step}" + (" (requeued)" if kind == "requeue" else "")
        marks.append({"step": int(step), "kind": kind, "label": label})
    return marks


def plot_run(run_dir: str, out: Optional[str] = None) -> Dict[str, Any]:
    """Draw RUN/plot.png (or `out`); return {"out": path, "marks": [...], "throughput": [...]}."""
    root = Path(run_dir).expanduser().resolve()
    run = RunDir(root)
    if not run.state.exists():
        raise PlotError(f"{root} is not a run directory (no state.json); pass the directory `submit` printed")
    attempts = collect(run)
    if not any(a.train for a in attempts):
        raise PlotError(f"{root}: no training steps logged yet (no `step N/M | loss ...` line in "
                        f"{run.logs}/attempt-*/node0/workerlog.0)")
    marks = marks_for(attempts)
    throughput = [{"attempt": a.name, "median_samples_per_s": a.median_samples_per_s} for a in attempts]
    out_path = Path(out).expanduser() if out else root / "plot.png"

    import matplotlib
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI

    fig = Figure(figsize=(10, 7), dpi=100)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for i, a in enumerate(attempts):
        color = f"C{i % 10}"
        if a.train:
            steps = [t[0] for t in a.train]
            ax_loss.plot(steps, [t[1] for t in a.train], color=color, lw=1.2, label=f"train loss ({a.name})")
            ax_lr.plot(steps, [t[2] for t in a.train], color=color, lw=1.2)
        if a.valid:
            ax_loss.plot([v[0] for v in a.valid], [v[1] for v in a.valid], color=color, ls="--", marker="o",
                         ms=4, label=f"valid loss ({a.name})")
    styles = {"resume": ("tab:green", ":")}
    for m in marks:
        color, ls = styles.get(m["kind"], ("tab:red", "--"))
        for ax in (ax_loss, ax_lr):
            ax.axvline(m["step"], color=color, ls=ls, lw=1)
        ax_loss.annotate(m["label"], xy=(m["step"], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                         va="top", ha="right" if m["kind"] != "resume" else "left", fontsize=8, color=color)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"{root.name}: {len(attempts)} attempt(s)")
    ax_loss.legend(fontsize=7, loc="upper right")
    ax_loss.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    table = "median samples/s per attempt:\n" + "\n".join(
        f"  {t['attempt']}: {t['median_samples_per_s']:.1f}" if t["median_samples_per_s"] is not None
        else f"  {t['attempt']}: -" for t in throughput)
    ax_lr.text(0.99, 0.97, table, transform=ax_lr.transAxes, ha="right", va="top", fontsize=7, family="monospace",
               bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return {"out": str(out_path), "marks": marks, "throughput": throughput}
