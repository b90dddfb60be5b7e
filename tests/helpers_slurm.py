"""Jobs that make room on the local Slurm cluster (scripts/local-slurm: n1, n2, n3 with 4 CPUs each; the `high`
partition preempts `low`), for the tests that preempt a run. Every job id is appended to the test's `cleanup`
list (conftest.py), which scancels them after the test whatever happened."""

from __future__ import annotations

import subprocess
from typing import List


def _sbatch(*args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def partition_nodes(partition: str = "high") -> List[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(set(out.split()))


def preempt_nodes(cleanup: List[str]) -> str:
    """A high-priority job that needs every CPU of every node: the low job must make way, wherever it runs."""
    job_id = _sbatch("-p", "high", "-N", str(len(partition_nodes())), "--exclusive", "-c", "4", "-o", "/dev/null",
                     "--wrap", "sleep 3")
    cleanup.append(job_id)
    return job_id


def hold_node(node: str, cleanup: List[str], seconds: int = 900) -> str:
    """A high-priority job that holds all of `node` for `seconds` (a low job there is preempted)."""
    job_id = _sbatch("-p", "high", "-w", node, "-N", "1", "--exclusive", "-J", "hold-node", "-o", "/dev/null",
                     "--wrap", f"sleep {seconds}")
    cleanup.append(job_id)
    return job_id


def job_state(job_id: str) -> str:
    """squeue's state of a queued or running job; '' once it left the queue."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip()


def idle_nodes(partition: str = "low") -> List[str]:
    """The nodes of `partition` that run no job (sinfo state idle)."""
    out = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-t", "idle", "-o", "%N"], capture_output=True,
                         text=True, check=True).stdout
    return sorted(set(out.split()))
