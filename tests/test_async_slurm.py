"""Asynchronous checkpoints on the real local Slurm (scripts/local-slurm): a 2-node tiny job (dynamic engine,
one rank per node over gloo) gets its warning signal while rank 0's write of a periodic checkpoint is held in
flight (ERNIE_CLUSTER_TEST_HOLD_SAVE). The stop's save waits for that write, saves synchronously, the job requeues
itself, and the resumed attempt ends with every loss and the final parameters of an uninterrupted run with
synchronous checkpoints, bit for bit.

The signal is `scancel --signal=USR2` on this test's own job: what Slurm sends to the job's steps before a
preemption or the time limit (submitit's `--signal=USR2@60`), without preempting anyone else's job on the shared
test cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from test_chain_slurm import wait_until

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "jobs" / "ernie_tiny_slurm.yaml"
COMMON = ("train.max_steps=90", "train.checkpoint_steps=30", "train.save_steps=90", "convert.enabled=false",
          "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0")


def _cli(*args: str, env: Dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "ernie_cluster", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)
    assert proc.returncode == 0, f"ernie_cluster {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _submit(tmp_path: Path, name: str, *overrides: str, env: Dict[str, str]) -> Dict[str, object]:
    run = tmp_path / name
    out = _cli("submit", str(TINY), f"output_dir={run}", f"name={name}", *COMMON, *overrides, env=env)
    return {"run": run, "job": re.search(r"^training job: (\d+)", out, re.M).group(1)}


def _train_state(run: Path) -> str | None:
    st = json.loads(_cli("status", str(run), "--json"))
    state = next(j["state"] for j in st["jobs"] if j["kind"] == "train")
    return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") else None


def _losses(path: Path) -> Dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_stop_with_a_write_in_flight_requeues_and_resumes_exactly(slurm_cluster, tmp_path, cleanup):
    ref_log, log = tmp_path / "ref.jsonl", tmp_path / "async.jsonl"
    ref = _submit(tmp_path, "sync-reference", "train.async_checkpoint=false",
                  env={"ERNIE_CLUSTER_LOSS_LOG": str(ref_log)})
    cleanup.append(ref["job"])
    release = tmp_path / "release"
    job = _submit(tmp_path, "async", env={"ERNIE_CLUSTER_LOSS_LOG": str(log),
                                          "ERNIE_CLUSTER_TEST_HOLD_SAVE": f"30:{release}"})
    cleanup.append(job["job"])
    run, job_id = job["run"], job["job"]
    worker0 = run / "logs" / f"attempt-{job_id}-0" / "node0" / "workerlog.0"
    try:
        # training goes on past step 30 while rank 0's write of step 30 is held (the next one is at 60)
        wait_until(lambda: max(_losses(log), default=0) >= 32, 600, "step 32 of the async job", interval=0.2)
        assert (run / "checkpoints" / ".tmp.step_000000030").is_dir()
        assert not (run / "checkpoints" / "step_000000030").exists()
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        wait_until(lambda: "first waiting for the write of step 30 in flight" in _text(worker0), 120,
              "the stop's save to wait for the write in flight")
    finally:
        release.write_text("go")
    assert wait_until(lambda: _train_state(run), 600, "the async job to end") == "COMPLETED"
    assert wait_until(lambda: _train_state(ref["run"]), 600, "the reference job to end") == "COMPLETED"

    st = json.loads(_cli("status", str(run), "--json"))
    first, last = st["attempts"][0], st["attempts"][-1]
    assert first["reason"] == "stopped" and first["action"] == "requeue" and last["reason"] == "completed"
    stop = first["step"]
    text0 = _text(worker0)
    assert 32 <= stop < 60 and "writes take longer" not in text0  # the stop's save waited, not a periodic one
    assert re.search(r"checkpoint step 30 saved to \S+ in [\d.]+s in the background", text0)
    assert text0.index("checkpoint step 30 saved to") < text0.index(f"checkpoint step {stop} saved to")
    resumed = _text(run / "logs" / f"attempt-{job_id}-1" / "node0" / "workerlog.0")
    assert re.search(rf"resumed from \S+step_{stop:09d}: step {stop}\b", resumed)
    got, want = _losses(log), _losses(ref_log)
    assert sorted(got) == sorted(want) == list(range(1, 91))
    assert [got[s]["loss"] for s in range(1, 91)] == [want[s]["loss"] for s in range(1, 91)]
    exits = {name: json.loads(p.read_text()) for name, r in (("ref", ref["run"]), ("async", run))
             for p in sorted((r / "logs").glob("attempt-*/node0/control/exit.0.json"))[-1:]}
    assert exits["ref"]["reason"] == exits["async"]["reason"] == "completed"
    assert exits["ref"]["param_digest"] == exits["async"]["param_digest"]
