"""Hang detection on the real local Slurm (2 nodes x 1 CPU trainer, tiny ERNIE, dynamic engine): a trainer
stopped with SIGSTOP mid-run is found hung within its limit, its node's Python stacks are recorded, the attempt is
recorded as `hung` with its node and rank and requeued from the last checkpoint, and the run completes, converts
and ends with the uninterrupted run's losses; a rank slowed on purpose is reported as a straggler in the launcher
log and in `status`, and a normal run has no straggler. Outcomes are read from Slurm and from the files the jobs
wrote."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from ernie_cluster.launch.cluster_env import expand_hostlist

from test_chain_slurm import cli, finished, losses, sacct_states, status, submit, wait_until

pytestmark = pytest.mark.slurm

# Short limits, so a hang is found in seconds: the learned training limit is 20 x the median step (a few
# tenths of a second here) but never under step_s_min; checkpoints and evaluations of the tiny model take
# well under a second. The same spec for every run here: the reference is an uninterrupted run of it.
COMMON = ("train.max_steps=80", "train.checkpoint_steps=20", "train.save_steps=80", "train.eval_freq=40",
          "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0",
          "cluster.watchdog.step_s_min=10", "cluster.watchdog.warmup_s=60", "cluster.watchdog.checkpoint_s=30",
          "cluster.watchdog.evaluation_s=30", "cluster.requeue.max_failure_requeues=1")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) ")


@pytest.fixture(autouse=True)
def _cluster(slurm_cluster):
    yield


@pytest.fixture(scope="module")
def jobs_to_cancel():
    ids: List[str] = []
    yield ids
    if ids:
        import subprocess

        subprocess.run(["scancel", *ids], capture_output=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jobs_to_cancel) -> Dict:
    """An uninterrupted run of the same spec, submitted once for the module (it runs beside the tests' own)."""
    tmp = tmp_path_factory.mktemp("hang-reference")
    log = tmp / "loss.jsonl"
    job = submit(tmp, "hang-reference", *COMMON, "convert.enabled=false", env={"ERNIE_CLUSTER_LOSS_LOG": str(log)})
    jobs_to_cancel.append(job["train"])
    return dict(job, loss_log=log)


def _progress(loss_log: Path) -> int:
    return max(losses(loss_log), default=0) if loss_log.exists() else 0


def _log_time(line: str) -> float:
    return time.mktime(time.strptime(_LOG_TIME.match(line).group(1), "%Y-%m-%dT%H:%M:%S"))


def _launcher_logs(run: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(run.glob("logs/attempt-*/node*/launcher.log")))


def test_a_sigstopped_trainer_is_hung_within_its_limit_requeued_and_ends_like_an_uninterrupted_run(
        tmp_path, reference, jobs_to_cancel):
    loss_log = tmp_path / "loss.jsonl"
    job = submit(tmp_path, "hang", *COMMON, env={"ERNIE_CLUSTER_LOSS_LOG": str(loss_log)})
    jobs_to_cancel += [job["train"], job["convert"]]
    run = job["run"]
    node1 = run / "logs" / f"attempt-{job['train']}-0" / "node1"
    wait_until(lambda: _progress(loss_log) >= 25, 300, "training past the first checkpoint")
    pid = int((node1 / "control" / "trainer.1.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # rank 1, on the job's second node: no step, no heartbeat from now on
    stopped_at = time.time()
    stopped_step = _progress(loss_log)

    record = wait_until(lambda: status(run)["attempts"], 240, "the hung attempt's record")[0]
    assert (record["reason"], record["cause"], record["action"]) == ("failed", "hung", "requeue"), record
    assert record["ranks"] == [1], record
    node_name = json.loads((node1 / "node_result.json").read_text())["node"]
    assert f"hung on node 1 ({node_name}), ranks [1]" in record["message"], record
    assert "process state T" in record["message"], record  # the stopped rank, seen as such
    assert list(record["excluded"]) == [node_name], record  # the hung node is left out of the requeued attempt

    # Found within its limit (plus the watchdog's 5 s poll and the 1 s heartbeat rate limit), not at the
    # job's time limit (15 minutes).
    log1 = (node1 / "launcher.log").read_text()
    hung_line = next(line for line in log1.splitlines() if "ERROR: hung: " in line)  # the watchdog's verdict
    limit = float(re.search(r"rank 1 \(pid \d+[^)]*\) silent \d+s in \w+[^(]*\(limit (\d+)s", hung_line).group(1))
    assert 10 <= limit <= 30, hung_line
    detected_after = _log_time(hung_line) - stopped_at  # log times are whole seconds
    assert limit - 4 <= detected_after <= limit + 10, (detected_after, hung_line)

    # Every trainer of that node left its Python stacks (the stopped one once continued), listed by `logs`.
    stacks = (node1 / "stacks.rank1.txt").read_text()
    assert "most recent call first" in stacks and "ernie_cluster/train/" in stacks, stacks
    assert "stacks.rank1.txt" in cli("logs", str(run)).stdout

    # Requeued from its last checkpoint, completed and converted; the losses are the uninterrupted run's.
    assert wait_until(lambda: finished(run, "convert"), 480, "the requeued training and the conversion") == "COMPLETED"
    st = status(run)
    assert [(a["reason"], a["cause"]) for a in st["attempts"]] == [("failed", "hung"), ("completed", None)]
    assert sacct_states(job["train"])[-1] == "COMPLETED"
    node_lists = subprocess.run(["sacct", "-n", "-P", "-X", "--duplicates", "-j", job["train"], "-o", "NodeList"],
                                capture_output=True, text=True, check=True).stdout.split()
    first, last = expand_hostlist(node_lists[0]), expand_hostlist(node_lists[-1])
    assert node_name in first and node_name not in last and len(last) == 2, node_lists  # ran elsewhere after
    resumed = re.findall(r"resumed from \S+: step (\d+)",
                         (run / "logs" / f"attempt-{job['train']}-1" / "node0" / "workerlog.0").read_text())
    assert len(resumed) == 1 and 20 <= int(resumed[0]) <= stopped_step + 10, (resumed, stopped_step)
    assert st["conversion"]["passed"] is True
    assert wait_until(lambda: finished(reference["run"], "train"), 300, "the reference run") == "COMPLETED"
    ref_losses, got = losses(reference["loss_log"]), losses(loss_log)
    assert max(got) == max(ref_losses) == 80
    assert got[80] == ref_losses[80] and got == ref_losses


def test_a_slowed_rank_is_a_straggler_in_the_log_and_in_status_and_a_normal_run_has_none(
        tmp_path, reference, jobs_to_cancel):
    job = submit(tmp_path, "straggler", *COMMON, "convert.enabled=false",
                 env={"ERNIE_CLUSTER_TEST_SLOW_RANK": "1:0.3"})
    jobs_to_cancel.append(job["train"])
    run = job["run"]
    shown = wait_until(lambda: (out := cli("status", str(run)).stdout) and "straggler rank 1" in out and out,
                       300, "a straggler in `status`")
    assert "WARNING straggler rank 1" in shown
    view = status(run)["watchdog"]
    assert [s["rank"] for s in view["stragglers"]] == [1] and view["stragglers"][0]["fastest_rank"] == 0, view
    assert view["stragglers"][0]["median_s"] >= 0.3 and not view["hung"], view
    assert wait_until(lambda: finished(run, "train"), 300, "the slowed run") == "COMPLETED"
    logs = _launcher_logs(run)
    assert "WARNING: straggler rank 1" in logs and "ERROR: hung" not in logs, logs[-3000:]

    # The uninterrupted run of the same spec: no straggler anywhere, nothing hung.
    assert wait_until(lambda: finished(reference["run"], "train"), 300, "the reference run") == "COMPLETED"
    ref_logs = _launcher_logs(reference["run"])
    assert "hang watchdog on" in ref_logs and "straggler" not in ref_logs, ref_logs[-3000:]
    assert "ERROR: hung" not in ref_logs and "WARNING: hung" not in ref_logs, ref_logs[-3000:]
    assert "straggler" not in cli("status", str(reference["run"])).stdout
    view = status(reference["run"])["watchdog"]
    assert view is not None and view["stragglers"] == [] and view["hung"] == [], view
