"""Shared pieces of the benchmarks that run jobs on the local Slurm (bench_preempt, bench_hang, bench_elastic):
the job's state, scancel and wait, an idle cluster, the loss log as it grows, stamped log lines, and unwinding on the
harness's SIGTERM so that every job a benchmark submitted is scancelled. (bench/common.py holds what every
benchmark shares; these only the Slurm ones.)"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ernie_cluster import slurm
from ernie_cluster.rundir import RunDir

from bench.common import Skip, slurm_answered, slurm_cluster_env

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class Stopped(Exception):
    """SIGTERM from the harness: unwind so the finally blocks scancel our jobs."""


def on_sigterm(signum, _frame):
    raise Stopped(f"stopped by signal {signum}")


def queue(env: Dict[str, str]) -> List[Tuple[str, str, str, str]]:
    """(job id, partition, name, state) of every job in squeue."""
    out = slurm_answered(slurm.squeue("%i|%P|%j|%T", env=env))
    return [tuple(line.split("|", 3)) for line in out.stdout.splitlines() if line.count("|") == 3]  # type: ignore[misc]


def job_state(job_id: str, env: Dict[str, str]) -> Optional[str]:
    """squeue state, or the last sacct state once it left the queue; None when neither knows it."""
    out = slurm_answered(slurm.squeue("%T", [job_id], env=env))
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()[0]
    out = slurm_answered(slurm.sacct("State", [job_id], env=env))
    states = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return states[-1] if states else None


def scancel_and_wait(ids: List[str], env: Dict[str, str], timeout: float = 60) -> List[str]:
    """scancel these jobs and wait until none is in squeue; returns those still there at the deadline."""
    ids = sorted({i for i in ids if i}, key=int)
    if not ids:
        return []
    deadline = time.monotonic() + timeout
    left = ids
    while True:
        slurm_answered(slurm.scancel(left, env=env))
        out = slurm_answered(slurm.squeue("%i", left, env=env))
        left = [i for i in out.stdout.split() if i in ids]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def wait_for_idle_cluster(env: Dict[str, str], ours: List[str], timeout: float) -> List[str]:
    """Wait (bounded) until no other job is queued or running; returns what is still there (for the note)."""
    deadline = time.monotonic() + timeout
    while True:
        others = [f"{j} ({p}, {n}, {s})" for j, p, n, s in queue(env) if j not in ours]
        if not others or time.monotonic() > deadline:
            return others
        time.sleep(2)


class LossTail:
    """Incremental reader of the loss log: (step, time first seen) per complete line."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.buf = ""
        self.lines: List[Tuple[int, float]] = []

    def poll(self) -> None:
        try:
            with open(self.path, "r", encoding="utf-8") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return
        now = time.time()
        self.buf += chunk
        *complete, self.buf = self.buf.split("\n")
        for line in complete:
            if line.strip():
                self.lines.append((int(json.loads(line)["step"]), now))

    @property
    def last_step(self) -> int:
        return self.lines[-1][0] if self.lines else 0


def first_stamp(path: Path, pattern: str) -> Optional[Tuple[float, re.Match]]:
    """Local-time stamp (1 s resolution) and match of the first line matching `pattern`, e.g. in a workerlog."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    rx = re.compile(pattern)
    for line in text.splitlines():
        m = rx.search(line)
        if m:
            stamp = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)", line)
            when = _dt.datetime.fromisoformat(f"{stamp.group(1)} {stamp.group(2)}").timestamp() if stamp else None
            return when, m
    return None


def check_alive(job: Dict[str, Any], env: Dict[str, str], what: str) -> None:
    state = job_state(job["job"], env)
    if state in TERMINAL:
        log = RunDir(job["run"]).attempt_log_dir(job["job"], 0, 0) / "launcher.log"
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-8:]) if log.exists() else "(none)"
        raise RuntimeError(f"{job['variant']} job {job['job']} ended ({state}) while waiting for {what}; "
                           f"launcher.log tail:\n{tail}")


def preemptible_cluster() -> Dict[str, str]:
    """The environment for the local cluster's Slurm; Skip unless it has partitions low and high."""
    env = slurm_cluster_env()
    names = slurm.sinfo_partitions(env=env, timeout="query")
    parts = [] if isinstance(names, slurm.NoAnswer) else names
    if not {"low", "high"} <= {p.rstrip("*") for p in parts}:
        raise Skip(f"needs partitions low (PreemptMode=REQUEUE) and high (the local cluster of scripts/local-slurm); "
                   f"this Slurm has {parts}")
    return env
