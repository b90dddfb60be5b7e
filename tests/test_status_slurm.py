"""`status` and `status --follow` of a run whose jobs wait in the real local Slurm's queue: full job ids, times
and reasons in a file, Slurm's expected start (`squeue --start`), what the run waits on, the node count of each
attempt; then the follow ends when the jobs are cancelled. The jobs never run (a begin time an hour away, and a
dependency on it), so they take no node from other tests."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_launch import make_run

from ernie_cluster import progress as pg
from ernie_cluster.slurm import parse_timestamp

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def queued_run(slurm_cluster, cleanup, tmp_path):
    run = make_run(tmp_path)
    name = "status-fits-a-rather-long-job-name-that-tables-like-to-cut"
    train = slurm_cluster.sbatch("--begin=now+3600", "-p", "debug", "-J", name, "-o", "/dev/null", "--wrap", "true")
    cleanup.append(train)
    convert = slurm_cluster.sbatch(f"--dependency=afterok:{train}", "--kill-on-invalid-dep=yes", "-p", "debug",
                                   "-J", name, "-o", "/dev/null", "--wrap", "true")
    cleanup.append(convert)
    run.write_state({"backend": "slurm", "name": name, "train_job_id": train, "convert_job_id": convert,
                     "submitted_at": time.time()})
    now = time.time()  # an earlier attempt of the job, preempted on 3 nodes, as node 0 records it
    run.record_attempt({"job_id": train, "restart": 0, "node": "n1", "nodes": 3, "reason": "stopped",
                        "cause": "preempted", "step": 1234, "action": "requeue", "started": now - 600,
                        "ended": now - 60, "signal": "SIGUSR2", "backend": "slurm",
                        "message": "3 trainer(s) saved and stopped after a stop request; preempted: restart 1 of at "
                                   "most 20 (cluster.requeue.max_requeues, counted over every requeue of the job)"})
    start = slurm_cluster.run("squeue", "--start", "-h", "-j", train, "-o", "%S").strip()
    return {"run": run, "train": train, "convert": convert, "start": parse_timestamp(start), "now": now}


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ernie_cluster", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, **kw)


def test_status_into_a_file_holds_full_ids_times_reasons_and_the_wait(queued_run, tmp_path):
    run, train, convert = queued_run["run"], queued_run["train"], queued_run["convert"]
    assert queued_run["start"] and queued_run["start"] > time.time() + 3000  # Slurm's estimate: the begin time
    target = tmp_path / "status.txt"
    with open(target, "w") as f:
        subprocess.run([sys.executable, "-m", "ernie_cluster", "status", str(run.root)], cwd=REPO, stdout=f,
                       check=True, timeout=120, env={**os.environ, "COLUMNS": "40"})
    text = target.read_text()
    assert "…" not in text and "\x1b" not in text
    jobs = {cells[0]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()
                                          if line.startswith("│ train ") or line.startswith("│ convert "))}
    assert jobs["train"][1:3] == [train, "PENDING (BeginTime)"]
    assert jobs["convert"][1:3] == [convert, "PENDING (Dependency)"]
    attempt = next([c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│ 0 "))
    stamp = [time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(queued_run["now"] - ago)) for ago in (600, 60)]
    assert attempt == ["0", train, "0", "3", *stamp, "stopped", "preempted", "1234", "requeue"]
    assert (f"waiting on: training job {train} is pending (BeginTime: its begin time has not come); Slurm expects it "
            f"to start at {pg.fmt_time(queued_run['start'])}") in text
    assert f"waiting on: conversion job {convert} waits for training job {train} to complete (afterok)" in text

    data = json.loads(cli("status", str(run.root), "--json").stdout)
    assert {"run_dir", "name", "backend", "jobs", "attempts", "checkpoint", "conversion", "max_steps", "data",
            "causes", "nodes", "watchdog"} <= set(data)
    by_kind = {j["kind"]: j for j in data["jobs"]}
    assert by_kind["train"]["expected_start"] == queued_run["start"] and by_kind["convert"]["expected_start"] is None
    assert by_kind["train"]["reason"] == "BeginTime" and len(data["waiting"]) == 2
    assert data["attempts"][0]["nodes"] == 3


def _read_until(lines: "queue.Queue[str]", texts, timeout: float) -> str:
    """Lines from the reader thread's queue until every one of `texts` appeared in them."""
    seen, deadline = "", time.monotonic() + timeout
    while not all(t in seen for t in texts):
        assert time.monotonic() < deadline, f"gave up waiting for {texts}: {seen}"
        try:
            seen += lines.get(timeout=1.0)
        except queue.Empty:
            pass
    return seen


def test_status_follow_waits_with_the_queue_and_ends_with_the_jobs(queued_run, slurm_cluster):
    run, train, convert = queued_run["run"], queued_run["train"], queued_run["convert"]
    follow = subprocess.Popen([sys.executable, "-m", "ernie_cluster", "status", str(run.root), "--follow"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True)
    reader.start()
    try:
        seen = _read_until(lines, [f"job {train}: PENDING", f"job {convert}: PENDING"], 60)
        assert f"training job {train}: PENDING (BeginTime), expected start {pg.fmt_time(queued_run['start'])}" in seen
        assert f"conversion job {convert}: PENDING (Dependency)" in seen
        assert f"attempt 0 preempted by Slurm at step 1234" in seen  # the replay of what happened before
        slurm_cluster.run("scancel", train, convert)
        follow.wait(timeout=90)  # Slurm is asked every 15 s
        reader.join(timeout=10)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 1, follow.stderr.read()  # the run did not complete
    text = seen + "".join(lines.queue)
    assert "\x1b" not in text and "\r" not in text
    assert f"training job {train}: CANCELLED" in text
    lines = text.splitlines()
    assert lines[-5].startswith("run CANCELLED after ") and lines[-4] == "  attempts:        1 (1 preempted, requeued)"
