"""The local backend runs the README's main job end to end: data, train, a simulated preemption, resume, convert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_local_chain_preempts_resumes_and_converts(tmp_path):
    run = tmp_path / "run"
    loss_log = tmp_path / "loss.jsonl"
    cmd = [sys.executable, "-m", "ernie_cluster", "submit", "jobs/ernie_tiny_local.yaml", f"output_dir={run}",
           f"data.input_prefix={tmp_path / 'data' / 'toy'}", "train.max_steps=150", "train.checkpoint_steps=40",
           "train.save_steps=150", "train.eval_freq=50", "--preempt-after", "4"]  # seconds of training
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ERNIE_CLUSTER_LOSS_LOG": str(loss_log),
                               "DOMAIN_HUB_TOKEN": "hunter2-do-not-log", "PADDLE_MASTER": "10.255.255.1:1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # a secret in the submitting shell reaches no file of the run (paddle's launcher logs its environment),
    # and a stale PADDLE_MASTER did not override the launcher's own --master
    for f in run.rglob("*"):
        if f.is_file():
            assert b"hunter2-do-not-log" not in f.read_bytes(), f
    launcher_log = next(run.glob("logs/attempt-*-0/node0/launcher.log")).read_text()
    assert "DOMAIN_HUB_TOKEN" in launcher_log and "PADDLE_MASTER" in launcher_log

    # data: the raw corpus was tokenized into the prefix
    assert (tmp_path / "data" / "toy_ids.npy").exists() and (tmp_path / "data" / "toy_idx.npz").exists()
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert [a["reason"] for a in attempts] == ["stopped", "completed"], attempts
    stop_step = attempts[0]["step"]
    assert 0 < stop_step < 150
    # resume: the second attempt started from the checkpoint written at the stop, and every step ran once more
    worker = (run / "logs" / f"attempt-{attempts[1]['job_id']}-1" / "node0" / "workerlog.0").read_text()
    assert f"step {stop_step}," in worker.split("resumed from", 1)[1].split("\n", 1)[0]
    steps = [json.loads(line)["step"] for line in loss_log.read_text().splitlines()]
    assert steps == list(range(1, 151)), "no step lost or repeated across the preemption"
    # convert: the dependent step ran and verified the converted model
    report = json.loads((run / "converted" / "convert_report.json").read_text())
    assert report["passed"] is True and report["checkpoint_step"] == 150
    assert (run / "converted" / "model_state.pdparams").exists()
    # VisualDL scalars were written
    assert any((run / "visualdl").rglob("*"))
    state = json.loads((run / "state.json").read_text())
    assert state["local_state"] == "COMPLETED" and state["restarts"] == 1
