"""Bad nodes on the real local Slurm cluster (scripts/local-slurm: n1, n2, n3, SlurmdTimeout=10):

- a node dies mid-run (its slurmd and the job's processes on it killed): Slurm ends the attempt as NODE_FAIL and
  requeues the job; the next attempt records the dead node and when, resumes from the last complete checkpoint on
  the other two nodes, and the conversion still runs. The node is brought back afterwards, whatever happens.
- a node fails its pre-flight (the test hook ERNIE_CLUSTER_TEST_PREFLIGHT_FAIL, once): the attempt ends at once as
  `preflight-failed` naming the node (not as a hang), the node is in the requeued job's ExcNodeList, and the next
  attempt runs on the other two nodes and completes (stand-in trainers, no model).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from test_chain_slurm import cli, finished, losses, sacct_states, status, submit, wait_until
from test_launch_slurm import FAKE_TRAINER_MODULE

from ernie_cluster.render import render_sbatch
from ernie_cluster.rundir import RunDir
from ernie_cluster.spec import JobSpec

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
LOCAL_SLURM = REPO / "scripts" / "local-slurm"


@pytest.fixture(autouse=True)
def _cluster(slurm_cluster):
    yield slurm_cluster


def job_nodes(job_id: str) -> List[str]:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    return subprocess.run(["scontrol", "show", "hostnames", out], capture_output=True,
                          text=True).stdout.split() if out else []


def job_field(job_id: str, key: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    match = re.search(rf"\b{key}=(\S*)", out)
    return match.group(1) if match else ""


def _environ(pid: int) -> Dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def kill_node(cluster_dir: Path, node: str, job_id: str) -> List[int]:
    """What a dead machine looks like to Slurm: its slurmd gone (SIGKILL), and this job's processes on it with the
    slurmstepd above them. Only this job's processes: SLURM_JOB_ID and SLURMD_NODENAME in their environment."""
    slurmd = int((cluster_dir / "run" / f"slurmd-{node}.pid").read_text().split()[0])
    victims = {slurmd}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = _environ(int(entry.name))
        if env.get("SLURMD_NODENAME") == node and env.get("SLURM_JOB_ID") == job_id:
            victims.add(int(entry.name))
            parent = _parent(int(entry.name))
            try:
                if parent > 1 and Path(f"/proc/{parent}/comm").read_text().strip() == "slurmstepd":
                    victims.add(parent)
            except OSError:
                pass
    for pid in sorted(victims):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(victims)


def test_a_dead_node_ends_the_attempt_as_node_fail_and_the_run_still_completes(tmp_path, cleanup, slurm_cluster):
    loss_log = tmp_path / "loss.jsonl"
    # exclusive: no other job shares the nodes whose slurmd this test kills
    job = submit(tmp_path, "deadnode", "train.max_steps=240", "train.checkpoint_steps=20", "train.save_steps=240",
                 "cluster.exclusive=true", env={"ERNIE_CLUSTER_LOSS_LOG": str(loss_log)})
    cleanup += [job["train"], job["convert"]]
    run, train = job["run"], job["train"]
    killed_at = None
    victim = None
    try:
        # past a complete checkpoint (step 20), well before the end
        wait_until(lambda: loss_log.exists() and max(losses(loss_log), default=0) >= 30, 300, "training to step 30")
        nodes = job_nodes(train)
        assert len(nodes) == 2, nodes
        victim = nodes[1]  # node rank 1: the batch shell lives on node 0
        killed_at = time.time()
        assert kill_node(slurm_cluster.state_dir, victim, train)
        # Slurm notices (SlurmdTimeout=10), ends the attempt as NODE_FAIL and requeues the job by itself
        wait_until(lambda: "NODE_FAIL" in sacct_states(train), 120, "NODE_FAIL in sacct")
        # the requeued attempt runs on the other nodes, trains to the end, and the conversion follows
        assert wait_until(lambda: finished(run, "convert"), 420, "training and conversion to finish") == "COMPLETED"
    finally:
        if victim is not None:  # bring the node back, whatever happened
            subprocess.run([str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=300)
    history = sacct_states(train)
    assert history[0] == "NODE_FAIL" and history[-1] == "COMPLETED", history
    st = status(run)
    lost, *_, done = st["attempts"]
    assert (lost["restart"], lost["reason"], lost["cause"], lost["action"]) == (0, "failed", "node-failed", "requeue")
    assert [f["node"] for f in lost["failed_nodes"]] == [victim], lost
    died_at = lost["failed_nodes"][0]["at"]
    assert killed_at - 5 <= died_at <= killed_at + 120, (killed_at, died_at)
    assert lost["reconciled"].startswith(f"written by attempt {train}-1") and "NODE_FAIL" in lost["message"]
    assert done["reason"] == "completed" and done["restart"] >= 1
    # resumed from the last complete checkpoint, the one the record names
    resume_step = int(re.search(r"\(step (\d+)\)", lost["message"]).group(1))
    worker = (run / "logs" / f"attempt-{train}-1" / "node0" / "workerlog.0").read_text()
    assert re.search(rf"resumed from \S+: step {resume_step}\b", worker), worker[-2000:]
    assert resume_step >= 20 and resume_step % 20 == 0
    # the second attempt ran without the dead node
    argv1 = (run / "logs" / f"attempt-{train}-1" / "node0" / "launcher.log").read_text()
    assert re.search(r"node_list=(\S+)", argv1).group(1).split(",").count(victim) == 0
    assert sorted(losses(loss_log)) == list(range(1, 241)) and st["conversion"]["passed"] is True
    assert st["nodes"]["failed"] == [{"node": victim, "at": died_at, "why": lost["failed_nodes"][0]["why"],
                                      "attempt": f"{train}-0"}]
    text = cli("status", str(run)).stdout
    assert f"node {victim} died at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(died_at))}" in text, text


def _fake_trainer_run(tmp_path: Path, env: Dict[str, str]) -> RunDir:
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_ernie_trainer.py").write_text(FAKE_TRAINER_MODULE)
    raw = tmp_path / "raw"
    subprocess.run([sys.executable, "-m", "data_tools.toy_corpus", "--out-dir", str(raw), "--docs", "100"],
                   check=True, capture_output=True, cwd=REPO)
    spec = JobSpec.model_validate({
        "name": "preflight slurm test", "output_dir": str(tmp_path / "run"),
        "cluster": {"backend": "slurm", "time": "00:10:00", "requeue": {"signal_lead_s": 30}},
        "resources": {"nodes": 2, "procs_per_node": 1},
        "environment": {"python": sys.executable,
                        "env": {"ERNIE_CLUSTER_TRAIN_MODULE": "fake_ernie_trainer", "PYTHONPATH": str(mod_dir), **env}},
        "data": {"input_prefix": str(tmp_path / "data" / "corpus"), "raw_corpus": str(raw / "corpus.txt"),
                 "vocab_file": str(raw / "vocab.txt"), "split": "95,5,0"},
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True},
        "train": {"device": "cpu", "max_steps": 10},
    })
    run = RunDir(tmp_path / "run")
    for d in (run.slurm, run.submit):
        d.mkdir(parents=True)
    run.spec.write_text(spec.to_yaml())
    script = run.submit / "train.sbatch"
    script.write_text(render_sbatch(spec, "train.sbatch.j2", script_path=script))
    return run


def test_a_node_failing_its_preflight_is_named_excluded_and_the_run_goes_on_elsewhere(tmp_path, cleanup,
                                                                                     slurm_cluster):
    marker = tmp_path / "preflight-failed-once"
    run = _fake_trainer_run(tmp_path, {"ERNIE_CLUSTER_TEST_PREFLIGHT_FAIL": f"node1:{marker}"})
    started = time.time()
    job = slurm_cluster.sbatch("--chdir", str(REPO), str(run.submit / "train.sbatch"))
    cleanup.append(job)
    first = wait_until(lambda: run.read_attempts(), 180, "the first attempt's record")[0]
    took = time.time() - started
    bad = json.loads((run.attempt_log_dir(job, 0, 1) / "preflight.json").read_text())["host"]
    assert (first["reason"], first["cause"], first["action"]) == ("failed", "preflight-failed", "requeue"), first
    assert f"preflight failed on {bad}" in first["message"] and "hung" not in first["message"]
    assert list(first["excluded"]) == [bad] and first["not_excluded"] == {}
    # the requeued job will not run there, and the next attempt ran on the two other nodes
    # The record is written before the requeue; the ExcNodeList update follows it once the job is pending.
    assert wait_until(lambda: bad in job_field(job, "ExcNodeList").split(","), 30, f"ExcNodeList to name {bad}")
    wait_until(lambda: len(run.read_attempts()) >= 2, 240, "the requeued attempt to finish")
    second = run.read_attempts()[1]
    assert (second["reason"], second["restart"]) == ("completed", 1), second
    log1 = (run.attempt_log_dir(job, 1, 0) / "launcher.log").read_text()
    assert bad not in re.search(r"node_list=(\S+)", log1).group(1).split(",")
    wait_until(lambda: "COMPLETED" in sacct_states(job), 60, "sacct COMPLETED")
    # status lists the node with the reason (the run was submitted with plain sbatch: it registered itself)
    st = status(run.root)
    assert [(e["node"], e["attempt"]) for e in st["nodes"]["excluded"]] == [(bad, f"{job}-0")]
    assert "injected" in st["nodes"]["excluded"][0]["why"]
    assert f"excluded node {bad}" in cli("status", str(run.root)).stdout
    print(f"first attempt recorded {took:.1f}s after submission")
