"""Shared pytest wiring.

Cluster part: ``slurm_cluster`` starts (or reuses) the local Slurm cluster of
``scripts/local-slurm`` once per session. When it cannot start, tests that use
it are skipped, or fail when ``CI`` is set or ``ERNIE_REQUIRE_SLURM=1``.

``main_command_run``: the README's main command (local backend, a simulated preemption, convert) run once per
session with ``status --follow`` beside it; the console and plot tests read it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCAL_SLURM = REPO / "scripts" / "local-slurm"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs the local Slurm cluster (scripts/local-slurm)"
    )


def _slurm_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("ERNIE_REQUIRE_SLURM") == "1"


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path  # the generated slurm.conf (also in os.environ["SLURM_CONF"])
    state_dir: Path  # every file of the cluster: config, logs, spool

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run a Slurm client command (sbatch, squeue, sacct, ...); return stdout."""
        proc = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "SLURM_CONF": str(self.conf)},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc.stdout

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable ARGS``; return the job id."""
        return self.run("sbatch", "--parsable", *args).strip().split(";")[0]

    def sacct_states(self, job_id: str, duplicates: bool = False) -> list[str]:
        """States of the job's allocation records (all attempts with duplicates)."""
        args = ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id]
        if duplicates:
            args.append("--duplicates")
        out = self.run(*args, check=False)
        return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    try:
        proc = subprocess.run(
            [str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=600
        )
        error = None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error:
        msg = f"local Slurm cluster unavailable: scripts/local-slurm start failed:\n{error}"
        if _slurm_required():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)

    out = subprocess.run(
        [str(LOCAL_SLURM), "env"], capture_output=True, text=True, check=True
    ).stdout
    # lines are "export NAME=VALUE" with shell quoting
    env = dict(shlex.split(line)[1].split("=", 1) for line in out.splitlines() if line)
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    return SlurmCluster(conf=Path(env["SLURM_CONF"]), state_dir=Path(env["ERNIE_SLURM_DIR"]))


@pytest.fixture
def cleanup():
    """Job ids a test appends as it submits; every one is scancelled after the test, whatever happened."""
    ids: list = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


SECRET = "hunter2-do-not-log"


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def main_command_run(tmp_path_factory):
    """`submit jobs/ernie_tiny_local.yaml --force --preempt-after 8` (the README's command) into a temporary run
    directory, its stdout and stderr pipes; and `status --follow` on the same run from the moment it exists."""
    tmp = tmp_path_factory.mktemp("main-command")
    run = tmp / "run"
    # The submitting shell also holds a secret (no file of the run may hold it: paddle's launcher logs its
    # environment) and a stale PADDLE_MASTER (the launcher's own --master must win); the loss log is a test hook.
    env = {**os.environ, "ERNIE_CLUSTER_LOSS_LOG": str(tmp / "loss.jsonl"), "DOMAIN_HUB_TOKEN": SECRET,
           "PADDLE_MASTER": "10.255.255.1:1"}
    submit = subprocess.Popen(
        [sys.executable, "-m", "ernie_cluster", "submit", "jobs/ernie_tiny_local.yaml", "--force", "--preempt-after",
         "8", f"output_dir={run}", f"data.input_prefix={tmp / 'data' / 'toy'}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    follow = None
    try:
        _wait_for(run / "state.json", 120)
        follow = subprocess.Popen([sys.executable, "-m", "ernie_cluster", "status", str(run), "--follow"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = submit.communicate(timeout=600)
        f_out, f_err = follow.communicate(timeout=120)
    finally:
        for proc in (submit, follow):
            if proc is not None and proc.poll() is None:
                proc.kill()
    return {"run": run, "tmp": tmp, "loss_log": tmp / "loss.jsonl", "rc": submit.returncode, "out": out, "err": err,
            "follow_rc": follow.returncode, "follow_out": f_out, "follow_err": f_err}
