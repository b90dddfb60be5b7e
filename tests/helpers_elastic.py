"""Reading the loss logs of an elastic run (resources.nodes a range), shared by the trainer-level test
(test_elastic_train.py) and the one on the real local Slurm (test_elastic_slurm.py).

With ERNIE_CLUSTER_LOSS_LOG=PATH rank 0 appends one record per step to PATH and rank k to PATH.rank<k>, every
attempt of a run to the same files; a record holds the rank's `loss`, `lr`, `micro` (a content digest per
micro-batch) and `samples` (the global sample ids it trained on, in order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from test_train_support import read_jsonl

# Relative difference of a step's loss (mean over ranks) between node counts: float summation order only. Measured
# on this machine (2026-11-30): at most 2.3e-8 over 12 steps (trainer-level test), 4.0e-8 over 150 steps (Slurm
# test, 3 -> 2 -> 3 nodes); the bound leaves room for other CPUs and for longer runs, where it may grow a little.
TOLERANCE = 1e-5


def rank_log(loss_log: Path, rank: int) -> Path:
    return Path(loss_log) if rank == 0 else Path(f"{loss_log}.rank{rank}")


def steps_by_rank(loss_log: Path, ranks: int) -> Dict[int, List[Dict]]:
    """step -> the records of every rank, in rank order. Nothing is de-duplicated: a step logged twice by a rank
    (a replay) shows up as one record too many."""
    out: Dict[int, List[Dict]] = {}
    for rank in range(ranks):
        for rec in read_jsonl(rank_log(loss_log, rank)):
            out.setdefault(rec["step"], []).append(rec)
    return out


def global_stream(records: List[Dict]) -> Tuple[List[int], List[str]]:
    """One step across ranks: its global sample ids and its micro-batch digests, both in global order."""
    return [i for r in records for i in r["samples"]], [d for r in records for d in r["micro"]]


def mean_loss(records: List[Dict]) -> float:
    """A step's loss over the global batch: each rank logs the mean of its own micro-batches, all ranks as many."""
    return sum(r["loss"] for r in records) / len(records)


def relative_differences(got: Dict[int, List[Dict]], want: Dict[int, List[Dict]]) -> Dict[int, float]:
    """Per step of `want`: |mean loss of got - mean loss of want| / mean loss of want."""
    return {s: abs(mean_loss(got[s]) - mean_loss(want[s])) / mean_loss(want[s]) for s in sorted(want)}
