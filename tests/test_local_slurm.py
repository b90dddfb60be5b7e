"""The local Slurm cluster (scripts/local-slurm) behaves like a real one:
multi-node jobs, dependencies, preemption with requeue and signals."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
}


@pytest.fixture
def submit(slurm_cluster):
    """sbatch wrapper; cancels whatever the test left behind."""
    job_ids: list[str] = []

    def _submit(*args: str) -> str:
        job_id = slurm_cluster.sbatch(*args)
        job_ids.append(job_id)
        return job_id

    yield _submit
    if job_ids:
        slurm_cluster.run("scancel", *job_ids, check=False)


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return result


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def final_state(cluster, job_id: str, timeout: float = 60) -> str:
    """Wait until sacct reports a terminal state for the job; return it."""
    def check():
        states = cluster.sacct_states(job_id)
        return states[-1] if states and states[-1] in TERMINAL else None

    return wait_until(check, timeout, f"job {job_id} to finish")


def test_two_node_job(slurm_cluster, submit, tmp_path: Path):
    script = write_script(tmp_path / "job.sh", f"""
        scontrol show hostnames "$SLURM_JOB_NODELIST" > {tmp_path}/hostnames
        srun bash -c 'echo "$SLURMD_NODENAME $SLURM_NODEID $SLURM_PROCID" > {tmp_path}/task-$SLURM_PROCID'
    """)
    job = submit("-N2", "--ntasks-per-node=1", "-o", f"{tmp_path}/out-%j.txt", str(script))

    assert final_state(slurm_cluster, job) == "COMPLETED", (tmp_path / f"out-{job}.txt").read_text()
    tasks = sorted((tmp_path / f"task-{i}").read_text().split() for i in range(2))
    assert tasks == [["n1", "0", "0"], ["n2", "1", "1"]]
    assert (tmp_path / "hostnames").read_text().split() == ["n1", "n2"]


def test_dependency_afterok(slurm_cluster, submit, tmp_path: Path):
    # A is held until B is queued, so B really waits on A
    a = submit("--hold", "-o", "/dev/null", "--wrap", f"sleep 1; date +%s.%N > {tmp_path}/a-end")
    b = submit(f"--dependency=afterok:{a}", "--kill-on-invalid-dep=yes", "-o", "/dev/null",
               "--wrap", f"date +%s.%N > {tmp_path}/b-start")
    slurm_cluster.run("scontrol", "release", a)

    assert final_state(slurm_cluster, a) == "COMPLETED"
    assert final_state(slurm_cluster, b) == "COMPLETED"
    assert float((tmp_path / "b-start").read_text()) >= float((tmp_path / "a-end").read_text())


def test_dependency_cancelled_when_parent_fails(slurm_cluster, submit, tmp_path: Path):
    a = submit("--hold", "-o", "/dev/null", "--wrap", "exit 3")
    b = submit(f"--dependency=afterok:{a}", "--kill-on-invalid-dep=yes", "-o", "/dev/null",
               "--wrap", f"touch {tmp_path}/b-ran")
    slurm_cluster.run("scontrol", "release", a)

    assert final_state(slurm_cluster, a) == "FAILED"
    assert final_state(slurm_cluster, b) == "CANCELLED"
    assert not (tmp_path / "b-ran").exists()


def test_preemption_signals_and_requeues(slurm_cluster, submit, tmp_path: Path):
    # The low job takes all of n1; a high job on n1 must preempt it. The batch
    # shell gets USR2 at once (preempt_send_user_signal, GraceTime=10), is
    # killed after the grace time, and Slurm requeues it: second attempt runs
    # with SLURM_RESTART_COUNT=1.
    low_script = write_script(tmp_path / "low.sh", f"""
        n=${{SLURM_RESTART_COUNT:-0}}
        echo "$n" > {tmp_path}/attempt-$n
        [ "$n" -ge 1 ] && exit 0
        trap 'echo USR2 >> {tmp_path}/usr2-marker' USR2
        touch {tmp_path}/low-running
        while true; do sleep 1 & wait $!; done
    """)
    low = submit("-p", "low", "-w", "n1", "-N1", "--exclusive", "--requeue",
                 "--signal=B:USR2@60", "--time=10", "--open-mode=append",
                 "-o", f"{tmp_path}/low-%j.txt", str(low_script))
    wait_until(lambda: (tmp_path / "low-running").exists(), 60, "the low job to run")

    high = submit("-p", "high", "-w", "n1", "-n1", "-o", "/dev/null",
                  "--wrap", f"sleep 2; touch {tmp_path}/high-ran")

    wait_until(lambda: (tmp_path / "usr2-marker").exists(), 30, "USR2 in the low job")
    assert final_state(slurm_cluster, high, timeout=60) == "COMPLETED"
    assert (tmp_path / "high-ran").exists()
    wait_until(lambda: (tmp_path / "attempt-1").exists(), 90, "the requeued low job to restart")
    assert (tmp_path / "attempt-1").read_text().strip() == "1"

    def attempts():
        states = slurm_cluster.sacct_states(low, duplicates=True)
        return states if len(states) >= 2 and states[-1] in TERMINAL else None

    states = wait_until(attempts, 60, "sacct to record both attempts of the low job")
    assert states[0] in ("PREEMPTED", "REQUEUED"), states
    assert states[-1] == "COMPLETED", states
