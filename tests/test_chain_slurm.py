"""The whole chain on the real local Slurm: submit, 2-node training, requeue on preemption and time limit,
afterok conversion, status and logs. CPU, tiny model. Outcomes are read from Slurm and from the files
the jobs wrote, never from helper return codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
from helpers_slurm import preempt_nodes

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "jobs" / "ernie_tiny_slurm.yaml"
PY = sys.executable


def cli(*args: str, check: bool = True, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([PY, "-m", "ernie_cluster", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"ernie_cluster {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def status(run: Path) -> dict:
    return json.loads(cli("status", str(run), "--json").stdout)


def job_state(run: Path, kind: str) -> str:
    return next(j["state"] for j in status(run)["jobs"] if j["kind"] == kind)


def sacct_states(job_id: str) -> List[str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "--duplicates", "-j", job_id, "-o", "JobID,State"],
                         capture_output=True, text=True).stdout
    return [line.split("|")[1].split()[0] for line in out.splitlines() if line.split("|")[0] == job_id]


def submit(tmp_path: Path, name: str, *overrides: str, env: Dict[str, str] | None = None) -> Dict[str, str]:
    run = tmp_path / name
    out = cli("submit", str(TINY), f"output_dir={run}", f"name={name}", *overrides, env=env).stdout
    ids = dict(re.findall(r"^(training|conversion) job: (\d+)", out, re.M))
    return {"run": run, "train": ids["training"], "convert": ids.get("conversion")}


def finished(run: Path, kind: str) -> str | None:
    state = job_state(run, kind)
    return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") else None


def losses(path: Path) -> Dict[int, float]:
    out: Dict[int, float] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]  # a replayed step (after resume) must give the same value; checked below
    return out


@pytest.fixture(autouse=True)
def _cluster(slurm_cluster):
    yield


def test_two_node_chain_completes_with_wiring_status_and_logs(tmp_path, cleanup):
    job = submit(tmp_path, "chain")
    cleanup += [job["train"], job["convert"]]
    run = job["run"]
    assert wait_until(lambda: finished(run, "convert"), 240, "the conversion job to end") == "COMPLETED"
    assert sacct_states(job["train"]) == ["COMPLETED"]

    st = status(run)
    assert [j["kind"] for j in st["jobs"]] == ["train", "convert"]
    assert st["checkpoint"]["step"] == 60
    assert st["conversion"]["passed"] is True and st["conversion"]["max_abs_diff"] <= 1e-4
    (attempt,) = st["attempts"]
    assert attempt["reason"] == "completed" and attempt["nodes"] == 2

    # The launch step on each node: rank from SLURM_NODEID, one master address and port for both nodes.
    logs = {k: (run / "logs" / f"attempt-{job['train']}-0" / f"node{k}" / "launcher.log").read_text() for k in (0, 1)}
    argvs = {k: re.search(r"argv: (.*)", logs[k]).group(1).split() for k in (0, 1)}
    for k, argv in argvs.items():
        assert argv[argv.index("--rank") + 1] == str(k)
        assert argv[argv.index("--nnodes") + 1] == "2"
        assert argv[argv.index("--nproc_per_node") + 1] == "1"
        assert argv[argv.index("--log_dir") + 1] == str(run / "logs" / f"attempt-{job['train']}-0" / f"node{k}")
        assert argv[argv.index("--job_id") + 1].endswith(job["train"])
    assert argvs[0][argvs[0].index("--master") + 1] == argvs[1][argvs[1].index("--master") + 1]
    # Both nodes trained: each wrote its own paddle worker log with training lines.
    for k in (0, 1):
        worker = run / "logs" / f"attempt-{job['train']}-0" / f"node{k}" / "workerlog.0"
        assert worker.exists(), worker
    assert "step 60/60" in (run / "logs" / f"attempt-{job['train']}-0" / "node0" / "workerlog.0").read_text()

    shown = cli("logs", str(run)).stdout
    assert "node0/workerlog.0" in shown and "node1/workerlog.0" in shown and "node1/launcher.log" in shown
    assert "environ(" not in shown and "envlog" not in shown  # paddle's environment dumps are not shown

    # The converted model loads in PaddleNLP.
    probe = ("import numpy, sys; from paddlenlp.transformers import ErnieModel, ErnieForPretraining; "
             "ErnieForPretraining.from_pretrained(sys.argv[1]); ErnieModel.from_pretrained(sys.argv[1]); print('ok')")
    proc = subprocess.run([PY, "-c", probe, str(run / "converted")], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("ok"), proc.stderr


def test_failed_training_cancels_the_conversion_and_status_says_why(tmp_path, cleanup):
    data = tmp_path / "broken"
    data.mkdir()
    # A corpus that passes the submit-side checks (its index reads; submit never opens the ids) but is
    # broken inside: a real error inside the job.
    (data / "c_ids.npy").write_bytes(b"not a numpy file")
    np.savez(data / "c_idx.npz", lens=np.array([3, 4], dtype=np.int32), docs=np.array([0, 1, 2], dtype=np.int64))
    vocab = REPO / "jobs" / "data" / "toy" / "vocab.txt"
    job = submit(tmp_path, "fails", f"data.input_prefix={data / 'c'}", "data.raw_corpus=null", f"data.vocab_file={vocab}")
    cleanup += [job["train"], job["convert"]]
    run = job["run"]
    assert wait_until(lambda: finished(run, "convert"), 180, "the conversion job to be cancelled") == "CANCELLED"
    assert sacct_states(job["train"]) == ["FAILED"]
    assert not (run / "converted").exists(), "the conversion must never run after a failed training"
    st = status(run)
    (attempt,) = st["attempts"]
    assert attempt["reason"] == "failed" and "data preparation" in attempt["message"]


def test_transient_failure_is_requeued_resumes_and_converts(tmp_path, cleanup):
    # Rank 0 crashes once after step 30 (a transient fault); max_failure_requeues=1 gives the job another attempt.
    loss_log = tmp_path / "loss.jsonl"
    job = submit(tmp_path, "transient", "train.max_steps=80", "train.checkpoint_steps=20", "train.save_steps=80",
                 "cluster.requeue.max_failure_requeues=1",
                 env={"ERNIE_CLUSTER_LOSS_LOG": str(loss_log),
                      "ERNIE_CLUSTER_TEST_CRASH_ONCE": f"30:{tmp_path / 'crashed.marker'}"})
    cleanup += [job["train"], job["convert"]]
    run = job["run"]
    assert wait_until(lambda: finished(run, "convert"), 420, "training and conversion to finish") == "COMPLETED"
    assert (tmp_path / "crashed.marker").read_text().strip() == "30"
    st = status(run)
    failed, completed = st["attempts"]
    assert (failed["reason"], failed["cause"], failed["action"]) == ("failed", "crashed", "requeue"), failed
    assert "simulated transient fault" in failed["message"] and completed["reason"] == "completed"
    assert next(j for j in st["jobs"] if j["kind"] == "train")["restarts"] >= 1
    worker = (run / "logs" / f"attempt-{job['train']}-1" / "node0" / "workerlog.0").read_text()
    assert re.search(r"resumed from \S+: step 20\b", worker)
    assert sorted(losses(loss_log)) == list(range(1, 81)) and st["conversion"]["passed"] is True


def _progress(loss_log: Path) -> int:
    return max(losses(loss_log), default=0) if loss_log.exists() else 0


def test_preempted_twice_resumes_exactly_and_converts(tmp_path, cleanup):
    common = ("train.max_steps=150", "train.checkpoint_steps=50", "train.save_steps=150",
              "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0")
    ref_log, pre_log = tmp_path / "ref.jsonl", tmp_path / "pre.jsonl"
    ref = submit(tmp_path, "reference", *common, "convert.enabled=false", env={"ERNIE_CLUSTER_LOSS_LOG": str(ref_log)})
    cleanup.append(ref["train"])
    assert wait_until(lambda: finished(ref["run"], "train"), 300, "the reference run") == "COMPLETED"

    job = submit(tmp_path, "preempted", *common, "cluster.partition=low", env={"ERNIE_CLUSTER_LOSS_LOG": str(pre_log)})
    cleanup += [job["train"], job["convert"]]
    run = job["run"]
    stops = []
    for threshold in (20, 0):
        # preempt once training has made progress past the previous stop
        wait_until(lambda: _progress(pre_log) > max([threshold] + [s + 10 for s in stops]), 240, "training progress")
        preempt_nodes(cleanup)
        record = wait_until(lambda: [a for a in status(run)["attempts"] if a["reason"] == "stopped"][len(stops):], 120,
                            "the stop to be recorded")
        stops.append(record[0]["step"])
        # the conversion job still waits for the same training job id
        assert job_state(run, "convert") == "PENDING"
    assert wait_until(lambda: finished(run, "convert"), 420, "training and conversion to finish") == "COMPLETED"

    history = sacct_states(job["train"])
    assert history.count("PREEMPTED") + history.count("REQUEUED") >= 2 and history[-1] == "COMPLETED", history
    st = status(run)
    train = next(j for j in st["jobs"] if j["kind"] == "train")
    assert train["restarts"] >= 2
    reasons = [a["reason"] for a in st["attempts"]]
    assert reasons.count("stopped") == 2 and reasons[-1] == "completed"
    # preemptions, not timeouts (Slurm moves a preempted job's end to now + GraceTime): they use no timeout requeue
    assert [a["cause"] for a in st["attempts"] if a["reason"] == "stopped"] == ["preempted", "preempted"]
    # Steps lost per preemption: none beyond the step in flight; every resume starts right after the stop.
    resumed = sorted(int(m) for m in re.findall(r"resumed from \S+: step (\d+)",
                                                "\n".join(p.read_text() for p in run.glob("logs/attempt-*/node0/workerlog.0"))))
    assert resumed == sorted(stops)
    # Final (and every) loss equal to the uninterrupted run, bit for bit (dropout 0).
    ref_losses, pre_losses = losses(ref_log), losses(pre_log)
    assert max(pre_losses) == max(ref_losses) == 150
    assert pre_losses == ref_losses
    assert st["conversion"]["passed"] is True


def _elapsed_s(job_id: str) -> int:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%M"], capture_output=True, text=True).stdout.strip()
    seconds = 0
    for part in out.replace("-", ":").split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def test_time_limit_checkpoints_on_the_warning_requeues_and_completes(tmp_path, cleanup):
    # How far a 2-minute attempt gets depends on the machine's speed, so the test sets the limit once
    # training runs: the job's end moves to within a minute, which puts it inside the 60 s warning lead.
    loss_log = tmp_path / "loss.jsonl"
    job = submit(tmp_path, "timeout", "cluster.time=10", "cluster.requeue.signal_lead_s=60", "train.max_steps=600",
                 "train.checkpoint_steps=1000", "train.save_steps=1000", "convert.enabled=false",
                 env={"ERNIE_CLUSTER_LOSS_LOG": str(loss_log)})
    cleanup.append(job["train"])
    run = job["run"]
    wait_until(lambda: _progress(loss_log) >= 20, 180, "training to start")
    limit_min = _elapsed_s(job["train"]) // 60 + 1
    subprocess.run(["scontrol", "update", f"JobId={job['train']}", f"TimeLimit={limit_min}"], check=True)
    stopped = wait_until(lambda: [a for a in status(run)["attempts"] if a["reason"] == "stopped"], 150,
                         "the time-limit warning to stop the attempt")
    assert stopped[0]["cause"] == "timeout" and stopped[0]["action"] == "requeue", stopped
    assert 20 <= stopped[0]["step"] < 600
    # the requeued attempt may run to the end
    subprocess.run(["scontrol", "update", f"JobId={job['train']}", "TimeLimit=15"], check=True)
    assert wait_until(lambda: finished(run, "train"), 420, "training to finish after the requeue") == "COMPLETED"
    st = status(run)
    assert [a["reason"] for a in st["attempts"]] == ["stopped", "completed"]
    assert st["checkpoint"]["step"] == 600
    # checkpoint_steps=1000 never fired: the resume came from the checkpoint written on the warning signal
    resumed = re.findall(r"resumed from \S+: step (\d+)",
                         (run / "logs" / f"attempt-{job['train']}-1" / "node0" / "workerlog.0").read_text())
    assert resumed == [str(stopped[0]["step"])]
    assert sorted(losses(loss_log)) == list(range(1, 601))


def test_plain_sbatch_path_behaves_like_submitit(tmp_path, cleanup):
    run = tmp_path / "sbatch-run"
    out_dir = tmp_path / "scripts"
    cli("render", str(TINY), "--sbatch", "--out", str(out_dir), f"output_dir={run}", "name=plain-sbatch")
    assert not (run / "spec.yaml").exists() and not (run / "state.json").exists(), "render must not start a run"
    # the rendered submit.sh: plain sbatch of both scripts, each recorded in the run directory at once
    out = subprocess.run(["bash", str(out_dir / "submit.sh")], capture_output=True, text=True, check=True).stdout
    train_id = re.search(r"^training job: (\d+)", out, re.M).group(1)
    convert_id = re.search(r"^conversion job: (\d+) \(afterok:(\d+)\)", out, re.M).group(1)
    cleanup += [train_id, convert_id]
    listed = {j["kind"]: j["job_id"] for j in status(run)["jobs"]}  # before either job has started
    assert listed == {"train": train_id, "convert": convert_id}
    wait_until(lambda: sacct_states(convert_id) and sacct_states(convert_id)[-1] in ("COMPLETED", "FAILED", "CANCELLED"),
               240, "the conversion job to end")
    assert sacct_states(train_id) == ["COMPLETED"] and sacct_states(convert_id) == ["COMPLETED"]
    st = status(run)  # the jobs registered themselves in the run directory
    assert {j["kind"]: j["job_id"] for j in st["jobs"]} == {"train": train_id, "convert": convert_id}
    assert st["checkpoint"]["step"] == 60 and st["conversion"]["passed"] is True


def test_second_submit_into_a_live_run_is_refused_and_cancel_checkpoints_without_requeue(tmp_path, cleanup):
    loss_log = tmp_path / "loss.jsonl"
    job = submit(tmp_path, "busy", "train.max_steps=400", "train.checkpoint_steps=1000", "convert.enabled=false",
                 env={"ERNIE_CLUSTER_LOSS_LOG": str(loss_log)})
    cleanup.append(job["train"])
    proc = cli("submit", str(TINY), f"output_dir={job['run']}", "name=busy", check=False)
    assert proc.returncode == 2 and "live run" in proc.stderr
    proc = cli("submit", str(TINY), f"output_dir={job['run']}", "name=busy", "--force", check=False)
    assert proc.returncode == 2 and "live run" in proc.stderr
    state = json.loads((job["run"] / "state.json").read_text())
    assert state["train_job_id"] == job["train"], "a refused submit must not touch the run"
    wait_until(lambda: _progress(loss_log) >= 5, 180, "training to start")
    cli("cancel", str(job["run"]))
    assert wait_until(lambda: finished(job["run"], "train"), 90, "the cancel") == "CANCELLED"
    # the trainers checkpointed first; the attempt is recorded as cancelled, not requeued
    (attempt,) = status(job["run"])["attempts"]
    assert (attempt["reason"], attempt["cause"], attempt["action"]) == ("stopped", "cancelled", "none"), attempt
    assert (job["run"] / "checkpoints" / f"step_{attempt['step']:09d}" / "MANIFEST.json").exists()
    assert sacct_states(job["train"]) == ["CANCELLED"]
