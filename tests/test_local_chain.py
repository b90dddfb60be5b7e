"""The local backend runs the README's main job end to end (conftest's main_command_run): data, train, a simulated
preemption, resume, convert; no secret of the submitting shell in the run."""

from __future__ import annotations

import json

SECRET = "hunter2-do-not-log"  # conftest's main_command_run puts it into the submitting shell


def test_local_chain_preempts_resumes_and_converts(main_command_run):
    run, tmp, loss_log = main_command_run["run"], main_command_run["tmp"], main_command_run["loss_log"]
    assert main_command_run["rc"] == 0, main_command_run["out"][-4000:] + main_command_run["err"][-4000:]
    # a secret in the submitting shell reaches no file of the run (paddle's launcher logs its environment),
    # and a stale PADDLE_MASTER did not override the launcher's own --master
    for f in run.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    launcher_log = next(run.glob("logs/attempt-*-0/node0/launcher.log")).read_text()
    assert "DOMAIN_HUB_TOKEN" in launcher_log and "PADDLE_MASTER" in launcher_log

    # data: the raw corpus was tokenized into the prefix
    assert (tmp / "data" / "toy_ids.npy").exists() and (tmp / "data" / "toy_idx.npz").exists()
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert [a["reason"] for a in attempts] == ["stopped", "completed"], attempts
    stop_step = attempts[0]["step"]
    assert 0 < stop_step < 200
    # resume: the second attempt started from the checkpoint written at the stop, and every step ran once more
    worker = (run / "logs" / f"attempt-{attempts[1]['job_id']}-1" / "node0" / "workerlog.0").read_text()
    assert f"step {stop_step}," in worker.split("resumed from", 1)[1].split("\n", 1)[0]
    steps = [json.loads(line)["step"] for line in loss_log.read_text().splitlines()]
    assert steps == list(range(1, 201)), "no step lost or repeated across the preemption"
    # convert: the dependent step ran and verified the converted model
    report = json.loads((run / "converted" / "convert_report.json").read_text())
    assert report["passed"] is True and report["checkpoint_step"] == 200
    assert (run / "converted" / "model_state.pdparams").exists()
    # VisualDL scalars were written
    assert any((run / "visualdl").rglob("*"))
    state = json.loads((run / "state.json").read_text())
    assert state["local_state"] == "COMPLETED" and state["restarts"] == 1
