"""Is a run directory in use? `submit` must never take "could not ask Slurm" for "finished"."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from ernie_cluster.rundir import RunDir
from ernie_cluster.submit import live_jobs, slurm_jobs


def _stub(bindir: Path, name: str, body: str) -> None:
    (bindir / name).write_text("#!/bin/sh\n" + body)
    (bindir / name).chmod(0o755)


@pytest.fixture
def slurm_run(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    (run.root / "state.json").write_text(json.dumps({"backend": "slurm", "train_job_id": "901", "convert_job_id": "902"}))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return run, bindir


def test_unreachable_slurm_counts_as_alive(slurm_run):
    run, bindir = slurm_run
    _stub(bindir, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\n")
    _stub(bindir, "sacct", "echo 'sacct: error: Problem talking to the database' >&2; exit 1\n")
    alive = live_jobs(run)
    assert alive == ["train job 901 (UNKNOWN, squeue/sacct did not answer)",
                     "convert job 902 (UNKNOWN, squeue/sacct did not answer)"]


def test_finished_jobs_free_the_directory_and_pending_reasons_are_shown(slurm_run):
    run, bindir = slurm_run
    _stub(bindir, "squeue", "echo '902|PENDING|DependencyNeverSatisfied'\n")  # 901 purged from squeue
    _stub(bindir, "sacct", "echo '901|COMPLETED'\n")
    assert slurm_jobs(["901", "902"]) == {"902": ("PENDING", "DependencyNeverSatisfied"), "901": ("COMPLETED", "")}
    assert live_jobs(run) == ["convert job 902 (PENDING, DependencyNeverSatisfied)"]
    _stub(bindir, "squeue", "exit 1\n")  # squeue: "Invalid job id" for purged jobs
    _stub(bindir, "sacct", "echo '901|COMPLETED'; echo '902|CANCELLED by 0'\n")
    assert live_jobs(run) == []


def test_a_held_train_lock_counts_as_alive(slurm_run):
    run, bindir = slurm_run
    _stub(bindir, "squeue", "exit 1\n")
    _stub(bindir, "sacct", "exit 0\n")  # accounting knows nothing
    assert live_jobs(run) == []
    with open(run.train_lock, "w") as handle:
        handle.write('{"job_id": "901", "host": "gpu7"}\n')
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX)
        (alive,) = live_jobs(run)
        assert "train.lock" in alive and "gpu7" in alive
    assert live_jobs(run) == []  # released with the handle


def test_pid_checks_see_zombies_and_reused_pids():
    import os
    import subprocess
    import sys
    import time

    from ernie_cluster.procs import pid_alive, start_ticks

    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), cmdline_contains="python")
    assert not pid_alive(os.getpid(), cmdline_contains="no-such-program-xyz")  # a pid now used by another program
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while pid_alive(child.pid) and time.time() < deadline:  # exited but not reaped: a zombie
        time.sleep(0.05)
    assert not pid_alive(child.pid) and os.path.exists(f"/proc/{child.pid}")
    child.wait()
    assert isinstance(start_ticks(os.getpid()), int) and start_ticks(child.pid) is None
