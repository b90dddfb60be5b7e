"""Elastic requeue on the real local Slurm (issue #15): a run with `resources.nodes: 2-3` (the tiny ERNIE of
jobs/ernie_tiny_slurm.yaml on CPU, dynamic engine, one trainer per node, dropout off, micro batch 2, global batch
12 = 2 x dp 3 x accumulation 2 = 2 x dp 2 x accumulation 3, partition `low`, whole nodes) against the same spec run
uninterrupted on 3 nodes in a second run directory.

The elastic run starts on the three nodes; a high-priority job takes the last node for itself (exclusive), which
preempts the run; Slurm restarts it on the two nodes that are free while that node stays held. Then the node is
let go and a job that needs every node preempts the run once more: it comes back on three, completes, and the
chained conversion job converts it.

What must hold: attempts.jsonl records 3, 2 and 3 nodes; the 2-node attempt did not run on the held node; its
trainer log says "resumed on 2 nodes, was 3"; every step trained on exactly the global sample ids and micro-batches
(content digests, in global order) of the uninterrupted run, on as many ranks as its attempt had; the steps of the
first attempt are the reference's bit for bit, every later loss within helpers_elastic.TOLERANCE (gradients are
summed in another order on another number of ranks, so bit-identity is not expected: see README, "Elastic
requeue"); the conversion wrote a model directory.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
from helpers_elastic import TOLERANCE, global_stream, relative_differences, steps_by_rank
from helpers_slurm import hold_node, idle_nodes, job_state, partition_nodes, preempt_nodes
from test_chain_slurm import losses, sacct_states, status, submit, wait_until

from ernie_cluster.rundir import RunDir

pytestmark = pytest.mark.slurm

LOSS_LOG = "ERNIE_CLUSTER_LOSS_LOG"
MAX_STEPS = 150  # room for a preemption that takes a few seconds to land: a step takes about 0.1 s here
GBS = 12
SPEC = ("resources.nodes=2-3", "cluster.partition=low", "cluster.exclusive=true", "train.micro_batch_size=2",
        f"train.global_batch_size={GBS}", f"train.max_steps={MAX_STEPS}", f"train.save_steps={MAX_STEPS}",
        "train.checkpoint_steps=1000",  # only the checkpoints written on the stop signal, and the last one
        "train.eval_freq=1000", "train.logging_freq=5",
        "model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@pytest.fixture(autouse=True)
def _cluster(slurm_cluster):
    yield


def _progress(log: Path) -> int:
    return max(losses(log), default=0) if log.exists() else 0


def _ended(job_id: str) -> str:
    states = sacct_states(job_id)
    return states[-1] if states and states[-1] in ENDED else ""


def _submit_on_idle_nodes(tmp_path: Path, name: str, log: Path, *extra: str) -> Dict:
    # with a node range Slurm starts the job on whatever is free: wait until the whole partition is
    wait_until(lambda: len(idle_nodes()) == len(partition_nodes("low")), 120, "every node of `low` to be idle")
    return submit(tmp_path, name, *SPEC, *extra, env={LOSS_LOG: str(log)})


def _stopped(run: Path, count: int) -> List[Dict]:
    stops = [a for a in RunDir(run).read_attempts() if a["reason"] == "stopped"]
    return stops if len(stops) >= count else []


def _reference(tmp_path: Path, cleanup: List[str]) -> Path:
    log = tmp_path / "reference.jsonl"
    job = _submit_on_idle_nodes(tmp_path, "elastic-reference", log, "convert.enabled=false")
    cleanup.append(job["train"])
    assert wait_until(lambda: _ended(job["train"]), 300, "the uninterrupted run") == "COMPLETED"
    (attempt,) = RunDir(job["run"]).read_attempts()
    assert (attempt["reason"], attempt["nodes"]) == ("completed", 3), attempt
    return log


def _elastic(tmp_path: Path, cleanup: List[str]) -> Dict:
    """3 nodes -> preempted, one node held -> 2 nodes -> node let go, preempted again -> 3 nodes, to the end."""
    log = tmp_path / "elastic.jsonl"
    job = _submit_on_idle_nodes(tmp_path, "elastic", log)
    cleanup += [job["train"], job["convert"]]
    run = job["run"]
    wait_until(lambda: _progress(log) >= 3, 240, "training on three nodes")
    held = partition_nodes("low")[-1]  # any node would do: holding one preempts the whole job
    blocker = hold_node(held, cleanup)
    first = wait_until(lambda: _stopped(run, 1), 120, "the preemption to stop the first attempt")[0]["step"]
    wait_until(lambda: _progress(log) >= first + 5, 180, f"training to go on without {held}")
    assert job_state(blocker) == "RUNNING", f"{held} must still be held while the run trains on two nodes"
    subprocess.run(["scancel", blocker], check=True)
    preempt_nodes(cleanup)  # needs all three nodes: the run makes way, then gets all three back
    wait_until(lambda: _stopped(run, 2), 120, "the second preemption to stop the 2-node attempt")
    assert wait_until(lambda: _ended(job["convert"]), 300, "training and conversion to finish") == "COMPLETED"
    return {"run": run, "job": job["train"], "log": log, "held": held}


def _timeline(el: Dict) -> List[Dict]:
    """The attempts (3, 2, 3 nodes), each with the steps it trained; printed for the record."""
    attempts = RunDir(el["run"]).read_attempts()
    begin = 0
    for a in attempts:
        a["steps"] = (begin + 1, a["step"])
        begin = a["step"]
        print(f"attempt {a['job_id']}-{a['restart']}: {a['nodes']} nodes, steps {a['steps'][0]}-{a['steps'][1]}, "
              f"{a['reason']} ({a.get('cause')})")
    assert [(a["nodes"], a["reason"]) for a in attempts] == [(3, "stopped"), (2, "stopped"), (3, "completed")], \
        attempts
    assert [a["cause"] for a in attempts[:2]] == ["preempted", "preempted"] and attempts[2]["step"] == MAX_STEPS
    assert attempts[0]["step"] < attempts[1]["step"] < MAX_STEPS
    return attempts


def _check_logs(el: Dict, attempts: List[Dict]) -> None:
    run = RunDir(el["run"])
    small, big = (run.attempt_log_dir(el["job"], a["restart"], 0) for a in attempts[1:])
    node_list = re.search(r"node_list=(\S+)", (small / "launcher.log").read_text()).group(1).split(",")
    assert len(node_list) == 2 and el["held"] not in node_list, node_list
    shrink = "resumed on 2 nodes, was 3: accumulation 2 -> 3, dp 3 -> 2 (global batch 12 kept)"
    grow = "resumed on 3 nodes, was 2: accumulation 3 -> 2, dp 2 -> 3 (global batch 12 kept)"
    assert shrink in (small / "workerlog.0").read_text()
    assert grow in (big / "workerlog.0").read_text()
    first = run.attempt_log_dir(el["job"], attempts[0]["restart"], 0) / "workerlog.0"
    assert "resumed on" not in first.read_text()


def _check_stream_and_losses(el: Dict, ref_log: Path, attempts: List[Dict]) -> float:
    """The same samples step by step, on as many ranks as each attempt had; losses within TOLERANCE."""
    want, got = steps_by_rank(ref_log, 3), steps_by_rank(el["log"], 3)
    assert sorted(got) == sorted(want) == list(range(1, MAX_STEPS + 1))
    ranks = {s: a["nodes"] for a in attempts for s in range(a["steps"][0], a["steps"][1] + 1)}
    for step in range(1, MAX_STEPS + 1):
        assert [r["step"] for r in got[step]] == [step] * ranks[step], (step, ranks[step])  # no step replayed
        ids, micro = global_stream(got[step])
        ref_ids, ref_micro = global_stream(want[step])
        assert ids == ref_ids == list(range((step - 1) * GBS, step * GBS)), step
        assert micro == ref_micro, step
    rel = relative_differences(got, want)
    assert max(rel.values()) <= TOLERANCE, rel
    assert all(got[s][0]["lr"] == want[s][0]["lr"] for s in got)  # the same schedule
    # the first attempt ran as the reference does: its steps are the reference's bit for bit
    first = range(1, attempts[0]["step"] + 1)
    assert [[r["loss"] for r in got[s]] for s in first] == [[r["loss"] for r in want[s]] for s in first]
    return max(rel.values())


def test_elastic_run_shrinks_to_the_free_nodes_grows_back_and_matches_the_uninterrupted_run(tmp_path, cleanup):
    ref_log = _reference(tmp_path, cleanup)
    el = _elastic(tmp_path, cleanup)
    attempts = _timeline(el)
    _check_logs(el, attempts)
    worst = _check_stream_and_losses(el, ref_log, attempts)
    print(f"largest relative loss difference to the uninterrupted run: {worst:.3g} (tolerance {TOLERANCE:g})")
    st = status(el["run"])
    assert [a["nodes"] for a in st["attempts"]] == [3, 2, 3]
    assert st["conversion"]["passed"] is True
    converted = el["run"] / "converted"
    assert (converted / "model_state.pdparams").is_file() and (converted / "convert_report.json").is_file()
