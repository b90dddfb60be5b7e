"""Asynchronous periodic checkpoints with real trainer processes (static engine, CPU, local backend).

The reference is an uninterrupted run with `train.async_checkpoint: false` (every save synchronous, as before);
every other run here writes its periodic checkpoints in the background. Each must give that run's losses and
final parameters bit for bit: uninterrupted, after a SIGKILL while a write is held in flight
(ERNIE_CLUSTER_TEST_HOLD_SAVE), after a stop that has to wait for a write in flight, and after its newest
checkpoint was damaged. A failed background write is reported by the stop; host memory that cannot hold the
copy makes `auto` synchronous and `true` refuse to start.
"""

from __future__ import annotations

import signal

import pytest

from test_train_support import Trainer, by_step, copy_checkpoints, flip_bit, make_run, read_jsonl, run_trainer, tiny_spec, toy_data  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BACKGROUND = "in the background"  # the log line of a checkpoint written by the background thread


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_data):
    """The synchronous reference and the same run with asynchronous checkpoints (24 steps, one every 4)."""
    out = {}
    for mode in ("false", "auto"):
        tmp = tmp_path_factory.mktemp(f"async-{mode}")
        spec = tiny_spec(tmp, toy_data, async_checkpoint=mode)
        t = run_trainer(make_run(tmp, spec), mode)
        assert t.proc.returncode == 0, t.output[-4000:]
        out[mode] = {"trainer": t, "run": tmp / "run", "losses": by_step(t.losses()), "spec": spec}
    return out


def _same_as_reference(runs, got, first: int, digest: str) -> None:
    ref = runs["false"]
    assert [got[s]["loss"] for s in range(first, 25)] == [ref["losses"][s]["loss"] for s in range(first, 25)]
    assert [got[s]["data"] for s in range(first, 25)] == [ref["losses"][s]["data"] for s in range(first, 25)]
    assert digest == ref["trainer"].exit_record()["param_digest"]


def test_asynchronous_checkpoints_change_nothing_in_an_uninterrupted_run(runs):
    sync, asy = runs["false"], runs["auto"]
    assert BACKGROUND not in sync["trainer"].output
    lines = asy["trainer"].output.splitlines()
    for step in (4, 8, 12, 16, 20):  # periodic: in the background; the final one at 24: synchronous
        assert any(f"checkpoint step {step} saved to" in line and BACKGROUND in line for line in lines), step
    assert any("checkpoint step 24 saved to" in line and BACKGROUND not in line for line in lines)
    assert "MB copied to host memory" in asy["trainer"].output  # the copy's size is logged
    _same_as_reference(runs, asy["losses"], 1, asy["trainer"].exit_record()["param_digest"])
    # the files the background thread wrote are the bytes the synchronous save wrote at that step
    for step in (4, 12, 20):
        for name in ("model_state.pdparams", "optimizer.pdopt", "rng_rank00000.pkl"):
            a = sync["run"] / "checkpoints" / f"step_{step:09d}" / name
            b = asy["run"] / "checkpoints" / f"step_{step:09d}" / name
            assert a.read_bytes() == b.read_bytes(), (step, name)


def test_sigkill_while_a_write_is_in_flight_resumes_exactly(runs, tmp_path):
    run = make_run(tmp_path, runs["auto"]["spec"] | {"output_dir": str(tmp_path / "run")})
    ckpts, release = run / "checkpoints", tmp_path / "never-released"
    t = Trainer(run, "held", ERNIE_CLUSTER_TEST_HOLD_SAVE=f"8:{release}")
    t.wait_for(lambda: len(read_jsonl(t.loss_log)) >= 10, what="step 10, with the write of step 8 held")
    tmp8 = ckpts / ".tmp.step_000000008"
    assert (tmp8 / "model_state.pdparams").is_file() and not (ckpts / "step_000000008").exists()
    t.kill(signal.SIGKILL)  # training went on past step 8 while its write was in flight
    t.wait()
    assert (ckpts / "step_000000004" / "MANIFEST.json").is_file() and not (ckpts / "step_000000008").exists()
    again = run_trainer(run, "after-kill")
    assert again.proc.returncode == 0, again.output[-3000:]
    assert f"resumed from {ckpts / 'step_000000004'}" in again.output
    assert not tmp8.exists()  # the half-written directory was removed, never read
    _same_as_reference(runs, by_step(again.losses()), 5, again.exit_record()["param_digest"])


def test_a_stop_waits_for_the_write_in_flight_then_saves_and_resumes_exactly(runs, tmp_path):
    run = make_run(tmp_path, runs["auto"]["spec"] | {"output_dir": str(tmp_path / "run")})
    release = tmp_path / "release"
    t = Trainer(run, "stop", ERNIE_CLUSTER_TEST_HOLD_SAVE=f"8:{release}", ERNIE_CLUSTER_TEST_STOP_AT_STEP="10")
    t.wait_for(lambda: "first waiting for the write of step 8 in flight" in t.output, what="the stop's wait")
    assert not (run / "checkpoints" / "step_000000010").exists()  # the stop's save waits ...
    release.write_text("go")  # ... until the write in flight ends
    assert t.wait() == 0, t.output[-3000:]
    out = t.output
    assert out.index("checkpoint step 8 saved to") < out.index("checkpoint step 10 saved to")
    rec = t.exit_record()
    assert rec["reason"] == "stopped" and rec["step"] == 10 and "checkpoint_error" not in rec
    for step in (8, 10):
        assert (run / "checkpoints" / f"step_{step:09d}" / "MANIFEST.json").is_file()
    again = run_trainer(run, "resumed")
    assert again.proc.returncode == 0, again.output[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_000000010'}" in again.output
    _same_as_reference(runs, {**by_step(t.losses()), **by_step(again.losses())}, 1,
                       again.exit_record()["param_digest"])


def test_a_damaged_newest_asynchronous_checkpoint_is_skipped_and_the_resume_is_exact(runs, tmp_path):
    run = make_run(tmp_path, runs["auto"]["spec"] | {"output_dir": str(tmp_path / "run")})
    copy_checkpoints(runs["auto"]["run"], run, (16, 20))  # both written by the background thread
    flip_bit(run / "checkpoints" / "step_000000020" / "optimizer.pdopt", -300, 0x10)
    t = run_trainer(run, "damaged")
    assert t.proc.returncode == 0, t.output[-3000:]
    assert "step_000000020 is damaged and skipped" in t.output and "corrupted" in t.output
    assert f"resumed from {run / 'checkpoints' / 'step_000000016'}" in t.output
    _same_as_reference(runs, by_step(t.losses()), 17, t.exit_record()["param_digest"])


def test_a_failed_background_write_is_reported_by_the_stop(runs, tmp_path, toy_data):
    spec = tiny_spec(tmp_path, toy_data, max_steps=12, eval_iters=0) | {"output_dir": str(tmp_path / "run")}
    run = make_run(tmp_path, spec)
    t = run_trainer(run, "fail", ERNIE_CLUSTER_TEST_FAIL_SAVE="8", ERNIE_CLUSTER_TEST_STOP_AT_STEP="9")
    assert t.proc.returncode == 0, t.output[-3000:]
    rec = t.exit_record()
    assert rec["reason"] == "stopped" and rec["step"] == 9
    assert "checkpoint step 8" in rec["checkpoint_error"] and "simulated failure" in rec["checkpoint_error"]
    assert "checkpoint step 8 failed in the background and is not on disk" in t.output  # at once, by the thread
    assert "checkpoint step 8: OSError" in t.output.split("stop requested")[1]  # and again by the stop
    complete = sorted(p.name for p in (run / "checkpoints").glob("step_*") if (p / "MANIFEST.json").is_file())
    assert complete == ["step_000000004", "step_000000009"]


def test_host_memory_decides_auto_and_refuses_true(runs, tmp_path, toy_data):
    common = dict(max_steps=4, checkpoint_steps=2, eval_iters=0)
    short = {"ERNIE_CLUSTER_TEST_MEM_AVAILABLE_MB": "1"}  # MemAvailable as if 1 MB
    run = make_run(tmp_path / "auto", tiny_spec(tmp_path / "auto", toy_data, **common))
    t = run_trainer(run, "auto", **short)
    assert t.proc.returncode == 0, t.output[-3000:]
    assert "periodic checkpoints are written synchronously until it can" in t.output
    assert BACKGROUND not in t.output and (run / "checkpoints" / "step_000000002" / "MANIFEST.json").is_file()
    run = make_run(tmp_path / "true", tiny_spec(tmp_path / "true", toy_data, async_checkpoint=True, **common))
    t = run_trainer(run, "true", **short)
    assert t.proc.returncode == 3, t.output[-3000:]
    rec = t.exit_record()
    assert rec["kind"] == "setup" and "train.async_checkpoint: true, but host memory cannot hold" in rec["error"]
    assert not read_jsonl(t.loss_log)  # refused before the first step
