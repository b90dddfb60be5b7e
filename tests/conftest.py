"""Shared pytest wiring.

Cluster part: ``slurm_cluster`` starts (or reuses) the local Slurm cluster of
``scripts/local-slurm`` once per session. When it cannot start, tests that use
it are skipped, or fail when ``CI`` is set or ``ERNIE_REQUIRE_SLURM=1``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
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
