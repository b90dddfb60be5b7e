"""The run directory's two records, state.json (`RunState`) and attempts.jsonl (`AttemptRecord`): one definition,
the on-disk JSON unchanged, and what a reader does not know kept as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import REPO, fakes, local_env, make_run, start_node  # noqa: F401

from ernie_cluster.rundir import JOB_KINDS, AttemptRecord, RunDir, RunState


def test_state_keeps_its_json_and_the_keys_a_reader_does_not_know(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    written = {"backend": "local", "name": "x", "supervisor_pid": 12, "submitted_at": 1.5, "spec_sha256": "ab",
               "resume": False, "from_a_newer_version": {"a": [1, 2]}}
    run.state.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    assert run.read_state() == written
    state = run.update_state(local_state="RUNNING", restarts=1)
    assert state == dict(written, local_state="RUNNING", restarts=1)
    assert run.state.read_text() == json.dumps(state, indent=2, sort_keys=True) + "\n"
    with pytest.raises(KeyError, match="restart_count"):
        run.update_state(restart_count=2)  # a typo is refused, not written
    assert run.read_state() == state
    assert RunDir(tmp_path / "none").read_state() == {}


def test_register_job_and_job_ids(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.register_job("convert", "12", name="n")
    run.register_job("train", "11", name="other")
    assert run.read_state() == {"backend": "slurm", "name": "n", "submitted_via": "sbatch", "train_job_id": "11",
                                "convert_job_id": "12"}
    assert list(run.job_ids().items()) == [("train", "11"), ("convert", "12")] and JOB_KINDS == ("train", "convert")
    # what `submit` writes: the conversion id may be None, an id may have been written as a number
    assert run.job_ids({"train_job_id": 7, "convert_job_id": None}) == {"train": "7"}
    with pytest.raises(ValueError):
        run.register_job("eval", "13", name="n")
    cli = [sys.executable, "-m", "ernie_cluster.rundir", "register-job", str(tmp_path)]
    assert subprocess.run(cli + ["eval", "13", "n"], cwd=REPO, capture_output=True).returncode == 2
    assert subprocess.run(cli + ["train", "14", "n"], cwd=REPO, capture_output=True).returncode == 0
    assert run.job_ids() == {"train": "14", "convert": "12"}


def test_cancel_request(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert not run.cancel_requested("4242")
    run.write_state({"backend": "slurm", "train_job_id": "4242"})
    run.request_cancel("4242")
    state = run.read_state()
    assert state["train_job_id"] == "4242" and set(state["cancel_requested"]) == {"job_id", "at"}
    assert state["cancel_requested"]["job_id"] == "4242" and isinstance(state["cancel_requested"]["at"], float)
    assert run.cancel_requested("4242") and run.cancel_requested(4242) and not run.cancel_requested("4243")


def test_read_attempts_one_per_attempt_unknown_keys_kept(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.record_attempt({"job_id": "7", "restart": 0, "reason": "stopped", "action": "requeue"})
    run.record_attempt({"job_id": "7", "restart": 1, "reason": "completed", "future_key": 3})
    run.record_attempt({"job_id": "7", "restart": 0, "reason": "stopped", "action": "requeue-failed"})
    with open(run.attempts, "a") as f:
        f.write('["not", "a", "record"]\n{"reason": "failed"}\n{"job_id": "8", "rest')  # torn last line
    assert run.read_attempts() == [{"job_id": "7", "restart": 0, "reason": "stopped", "action": "requeue-failed"},
                                   {"job_id": "7", "restart": 1, "reason": "completed", "future_key": 3},
                                   {"reason": "failed"}]
    assert json.loads(run.attempts.read_text().splitlines()[0]) == {"action": "requeue", "job_id": "7",
                                                                    "reason": "stopped", "restart": 0}
    assert RunDir(tmp_path / "none").read_attempts() == []


def test_the_node_launcher_writes_exactly_the_attempt_record(tmp_path: Path, fakes) -> None:  # noqa: F811
    run = make_run(tmp_path, cluster={"backend": "local"})
    code, result, out = start_node(fakes, run, local_env("localR"), mode="complete").finish()
    assert code == 0, out
    (record,) = run.read_attempts()
    assert set(record) == set(AttemptRecord.__annotations__), out
    assert (record["job_id"], record["restart"], record["reason"], record["backend"]) == \
        ("localR", 0, "completed", "local")


def test_state_keys_are_documented() -> None:
    assert set(RunState.__annotations__) == {
        "backend", "name", "submitted_at", "spec_sha256", "resume", "train_job_id", "convert_job_id",
        "submitted_via", "supervisor_pid", "local_state", "restarts", "convert_exit_code", "cancel_requested"}
