"""Bad nodes without a cluster: which node a failure is attributed to, the exclusion caps (pure), the record of an
attempt Slurm ended as NODE_FAIL, and node 0's Slurm side (`slurm_actions`) against stand-in scontrol, sinfo and
sacct scripts; then the node launcher itself (real processes, stand-in paddle launcher) with one node's pre-flight
failing: named in the record, excluded on requeue, never a hang."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_launch import exits, fakes, make_run, slurm_env, start_node  # noqa: F401

from ernie_cluster import slurm
from ernie_cluster.launch import attempt as att
from ernie_cluster.launch import node_faults as nf
from ernie_cluster.launch import preflight as pf
from ernie_cluster.launch import slurm_actions
from ernie_cluster.rundir import RunDir
from ernie_cluster.slurm import NodeState

NODES = ["n1", "n2", "n3", "n4"]


def crashed(node: int, at: float, rank: int) -> att.NodeOutcome:
    return att.NodeOutcome("failed", 30, f"rank {rank}: RuntimeError: boom", retryable=True, cause="crashed",
                           ranks=[rank], failed_at=at)


# ---------------------------------------------------------------------------
# attribution
# ---------------------------------------------------------------------------


def test_the_node_whose_trainer_failed_first_is_at_fault_not_the_one_that_reported_first() -> None:
    # rank 0 crashed (t=100); rank 1 on node 1 failed on its collective a moment later (t=100.4)
    outcomes = {0: crashed(0, 100.0, 0), 1: crashed(1, 100.4, 1)}
    total = att.combine_nodes(outcomes)
    assert (total.cause, total.nodes, total.ranks, total.failed_at) == ("crashed", [0], [0], 100.0)
    faults = nf.nodes_at_fault(total, outcomes, ["n1", "n2"])
    assert list(faults) == ["n1"] and faults["n1"].startswith("crashed on node 0 (ranks [0]): rank 0: RuntimeError")
    # without times every failed node with the cause is a candidate: on every node, so nobody's node
    outcomes = {0: crashed(0, None, 0), 1: crashed(1, None, 1)}  # type: ignore[arg-type]
    assert nf.nodes_at_fault(att.combine_nodes(outcomes), outcomes, ["n1", "n2"]) == {}
    # a follower (peer-failed) is never at fault; a single-node job's own node is
    follower = att.NodeOutcome("failed", 30, "node 1 failed", retryable=True, cause="peer-failed", ranks=[0])
    outcomes = {0: follower, 1: crashed(1, 100.0, 1)}
    assert list(nf.nodes_at_fault(att.combine_nodes(outcomes), outcomes, ["n1", "n2"])) == ["n2"]
    alone = {0: crashed(0, 1.0, 0)}
    assert list(nf.nodes_at_fault(att.combine_nodes(alone), alone, ["n7"])) == ["n7"]
    # the round trip through node_result.json keeps the time
    back = att.NodeOutcome.from_dict(json.loads(json.dumps(crashed(0, 100.0, 0).to_dict())))
    assert back.failed_at == 100.0


def test_which_causes_name_a_node() -> None:
    nan = att.NodeOutcome("failed", 3, "NaN", cause="nonfinite", ranks=[0], failed_at=1.0)
    assert nf.nodes_at_fault(att.combine_nodes({0: nan}), {0: nan}, ["n1"]) == {}  # the user's, not a node's
    # a hang: the watchdog's suspects (ranks) narrow it to their node (2 trainers per node: rank 3 is node 1)
    hung = {k: att.NodeOutcome("failed", 9, "silent", retryable=True, cause="hung", ranks=[3] if k else [])
            for k in (0, 1)}
    total = att.combine_nodes(hung)
    assert list(nf.nodes_at_fault(total, hung, ["n1", "n2"], trainers_per_node=2)) == ["n2"]
    # a failed pre-flight and a dead node name their nodes themselves
    pre = att.NodeOutcome("failed", None, "preflight failed on n2", cause="preflight-failed")
    assert nf.nodes_at_fault(pre, {1: pre}, ["n1", "n2"], named={"n2": "preflight failed on n2: disk"}) == \
        {"n2": "preflight failed on n2: disk"}
    dead = att.NodeOutcome("failed", None, "n2 is not responding", cause="node-failed")
    assert nf.nodes_at_fault(dead, {1: dead}, ["n1", "n2"], named={"n2": "node-failed: x"}) == {"n2": "node-failed: x"}


def test_a_node_that_failed_first_is_not_demoted_to_a_follower(tmp_path: Path) -> None:
    from ernie_cluster.launch.node import NodeLauncher

    attempt_dir = tmp_path / "attempt-7-0"
    (attempt_dir / "node1").mkdir(parents=True)
    (attempt_dir / "node1" / "node_result.json").write_text(json.dumps(
        {"reason": "failed", "message": "rank 1: gloo TIMEOUT", "failed_at": 100.4}))
    a = SimpleNamespace(node_dir=attempt_dir / "node0", cenv=SimpleNamespace(num_nodes=2, node_rank=0))
    launcher = NodeLauncher("/nowhere")
    assert launcher._failed_first(a, crashed(0, 100.0, 0)) is True  # its own crash came first: a cause
    assert launcher._failed_first(a, crashed(0, 101.0, 0)) is False  # killed after the peer failed: a follower
    assert launcher._failed_first(a, att.NodeOutcome("failed", 1, "killed", cause="trainer-died")) is False


# ---------------------------------------------------------------------------
# the exclusion caps
# ---------------------------------------------------------------------------


def test_exclusion_never_leaves_the_partition_short_of_nodes() -> None:
    # 3 usable nodes, a 2-node job: one may go, a second would leave one
    plan = nf.plan_exclusion({"n1": "crashed", "n2": "hung"}, current=[], job_nodes=2, usable=NODES[:3],
                             max_excluded=4)
    assert plan.added == {"n1": "crashed"} and plan.exclude_list == ["n1"]
    assert "would leave 1 usable node(s) in the partition for a 2-node job" in plan.skipped["n2"]
    # a dead (not usable) node does not count as capacity: excluding the live one would leave too few
    plan = nf.plan_exclusion({"n1": "crashed"}, current=[], job_nodes=2, usable=["n1", "n3"], max_excluded=4)
    assert plan.added == {} and "n1" in plan.skipped
    # excluding a node that is down anyway costs no capacity
    plan = nf.plan_exclusion({"n2": "node-failed"}, current=[], job_nodes=2, usable=["n1", "n3"], max_excluded=4)
    assert plan.added == {"n2": "node-failed"}
    # Slurm did not say which nodes are usable: nothing is excluded blind
    plan = nf.plan_exclusion({"n1": "crashed"}, current=[], job_nodes=1, usable=None, max_excluded=4)
    assert plan.added == {} and "sinfo" in plan.skipped["n1"]


def test_exclusion_cap_merges_with_the_jobs_list_and_ignores_the_users_own() -> None:
    usable = [f"n{i}" for i in range(1, 11)]
    plan = nf.plan_exclusion({"n3": "hung", "n4": "crashed"}, current=["n1", "n2", "n9"], job_nodes=2,
                             usable=usable, max_excluded=3, user_excluded=["n9"])
    # n1, n2 were ours already: one more fits under 3; the user's n9 is kept and not counted
    assert plan.added == {"n3": "hung"} and plan.exclude_list == ["n1", "n2", "n3", "n9"]
    assert "cluster.requeue.max_excluded_nodes=3 reached (excluded: n1, n2, n3)" in plan.skipped["n4"]
    plan = nf.plan_exclusion({"n1": "x", "n5": "y"}, current=["n1"], job_nodes=1, usable=usable, max_excluded=0)
    assert plan.added == {} and plan.skipped == {"n5": "cluster.requeue.max_excluded_nodes is 0"}
    assert plan.exclude_list == ["n1"] and not plan.changed
    # a node the job asks for by name (--nodelist) stays: excluding it would keep the job from ever starting
    plan = nf.plan_exclusion({"n2": "hung"}, current=[], job_nodes=1, usable=usable, max_excluded=4,
                             required=["n2", "n3"])
    assert plan.added == {} and "--nodelist" in plan.skipped["n2"]


# ---------------------------------------------------------------------------
# a dead node's attempt, recorded by the next one
# ---------------------------------------------------------------------------

ROW = {"job_id": "293", "state": "NODE_FAIL", "exit_code": "0:0", "start": "2026-11-29T21:50:21",
       "end": "2026-11-29T21:50:56", "nodes": "n[1-2]"}
DOWN = {"n1": NodeState("n1", "idle"), "n2": NodeState("n2", "down*", "Not responding",
                                                       slurm.parse_timestamp("2026-11-29T21:50:40"))}


def test_node_fail_is_recorded_with_the_dead_node_and_when() -> None:
    record = nf.lost_attempt_record(None, ROW, DOWN, job_id="293", restart=0, by="293-1", checkpoint_step=20)
    assert record is not None
    assert (record["reason"], record["cause"], record["action"], record["restart"]) == ("failed", "node-failed",
                                                                                        "requeue", 0)
    assert record["failed_nodes"] == [{"node": "n2", "at": slurm.parse_timestamp("2026-11-29T21:50:40"),
                                       "why": "Not responding"}]
    assert "n2 (Not responding, at 2026-11-29T21:50:40)" in record["message"] and "(step 20)" in record["message"]
    assert record["ended"] == slurm.parse_timestamp("2026-11-29T21:50:56") and record["nodes"] == 2
    assert record["reconciled"].startswith("written by attempt 293-1") and record["excluded"] == {}
    assert "n2" in record["not_excluded"]
    # what node 0 had written before Slurm killed it is replaced, and kept in the message
    old = {"job_id": "293", "restart": 0, "node": "n1", "nodes": 2, "reason": "failed", "cause": "trainer-died",
           "message": "ranks [1] ended without an exit record", "step": 27, "started": 5.0}
    record = nf.lost_attempt_record(old, ROW, DOWN, job_id="293", restart=0, by="293-1")
    assert (record["cause"], record["step"], record["started"]) == ("node-failed", 27, 5.0)
    assert "node 0 had recorded trainer-died: ranks [1] ended" in record["message"]
    assert nf.lost_attempt_record(record, ROW, DOWN, job_id="293", restart=0, by="293-2") is None  # already right
    # the node came back before anyone asked: still node-failed (Slurm's state says so), the node unknown
    back = nf.lost_attempt_record(None, ROW, {"n1": NodeState("n1", "idle"), "n2": NodeState("n2", "idle")},
                                  job_id="293", restart=0, by="293-1")
    assert back["cause"] == "node-failed" and back["failed_nodes"] == [] and "no longer marks" in back["message"]


def test_other_lost_attempts_never_get_a_cause_slurm_did_not_give() -> None:
    row = dict(ROW, state="PREEMPTED")
    record = nf.lost_attempt_record(None, row, {}, job_id="293", restart=0, by="293-1")
    assert (record["reason"], record["cause"]) == ("lost", "preempted") and "PREEMPTED" in record["message"]
    record = nf.lost_attempt_record(None, dict(ROW, state="CANCELLED by 0"), {}, job_id="293", restart=0, by="x")
    assert (record["reason"], record["cause"]) == ("lost", None)
    # a record node 0 wrote itself stands when Slurm says nothing about a node
    assert nf.lost_attempt_record({"cause": "crashed"}, dict(ROW, state="REQUEUED"), {}, job_id="293", restart=0,
                                  by="x") is None


def test_node_events_for_status() -> None:
    attempts = [{"job_id": "9", "restart": 0, "failed_nodes": [{"node": "n2", "at": 5.0, "why": "Not responding"}],
                 "not_excluded": {"n2": "down"}},
                {"job_id": "9", "restart": 1, "excluded": {"n1": "crashed"}}, {"job_id": "9", "restart": 2}]
    events = nf.node_events(attempts)
    assert events["failed"] == [{"node": "n2", "at": 5.0, "why": "Not responding", "attempt": "9-0"}]
    assert events["excluded"] == [{"node": "n1", "why": "crashed", "attempt": "9-1"}]
    assert events["not_excluded"] == [{"node": "n2", "why": "down", "attempt": "9-0"}]


# ---------------------------------------------------------------------------
# node 0's Slurm side, against stand-in tools
# ---------------------------------------------------------------------------


def _tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def stand_in_slurm(tmp_path: Path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "slurm.log"
    _tool(bindir, "scontrol", f'echo "scontrol $*" >> {log}\n'
          'case "$1" in\n'
          '  show) echo "JobId=4242 JobName=x ExcNodeList=${FAKE_EXC:-(null)} Partition=debug NumNodes=2 '
          'NodeList=n[1-2] Restarts=1"; exit 0;;\n'
          '  update) n=$(cat "$0.count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$0.count"\n'
          '    if [ $n -le ${FAKE_REFUSALS:-2} ]; then echo "scontrol: error: Job is no longer pending execution" >&2;'
          ' exit 1; fi; exit 0;;\n'
          'esac\nexit 0\n')
    _tool(bindir, "sinfo", f'echo "sinfo $*" >> {log}\n'
          'echo "n1|allocated|none|Unknown"; echo "n2|down*|Not responding|2026-11-29T21:50:40"\n'
          'echo "n3|idle|none|Unknown"; echo "n4|idle|none|Unknown"\n')
    _tool(bindir, "sacct", f'echo "sacct $*" >> {log}\n'
          'echo "4242|NODE_FAIL|0:0|2026-11-29T21:50:21|2026-11-29T21:50:56|n[1-2]"\n'
          'echo "4242|RUNNING|0:0|2026-11-29T21:51:10|Unknown|n[1,3]"\n')
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    return SimpleNamespace(env=env, log=log, bindir=bindir)


def _cenv(env, restart: int = 0, nodes=("n1", "n2")) -> SimpleNamespace:
    return SimpleNamespace(job_id="4242", env=env, num_nodes=len(nodes), node_list=list(nodes), node_rank=0,
                           restart_count=restart, is_slurm=True, attempt=f"4242-{restart}")


def test_requeue_then_exclusion_retried_until_slurm_takes_it(tmp_path: Path, stand_in_slurm) -> None:
    from test_launch import make_spec

    spec = make_spec(tmp_path, cluster={"backend": "slurm", "time": "01:00:00",
                                        "extra_sbatch": {"exclude": "n9"}, "requeue": {"max_excluded_nodes": 2}})
    cenv = _cenv(dict(stand_in_slurm.env, FAKE_EXC="n9"))
    plan = slurm_actions.plan(cenv, spec, {"n1": "crashed", "n3": "hung"})
    # usable: n1, n3, n4 (n2 is down); the 2-node job keeps n3 + n4 after n1 goes, not after n3 goes too
    assert plan.added == {"n1": "crashed"} and plan.exclude_list == ["n1", "n9"] and "n3" in plan.skipped
    lines: list = []
    assert slurm_actions.requeue(cenv, plan, lines.append) == (True, "", "")
    calls = stand_in_slurm.log.read_text().splitlines()
    assert calls[:2] == ["scontrol show job -o 4242", "sinfo -h -N -p debug -o %N|%T|%E|%H"]
    assert calls[2] == "scontrol requeue 4242"
    assert calls[3:] == ["scontrol update JobId=4242 ExcNodeList=n1,n9"] * 3  # refused twice, then taken
    assert "ExcNodeList=n1,n9, set after 3 tries" in lines[0]
    # Slurm keeps refusing: the requeue stands, the exclusion failure is reported
    (stand_in_slurm.bindir / "scontrol.count").unlink()
    cenv = _cenv(dict(stand_in_slurm.env, FAKE_REFUSALS="99"))
    ok, why, unexcluded = slurm_actions.requeue(cenv, plan, lines.append, window_s=0.5)
    assert ok and why == "" and "no longer pending execution" in unexcluded


def test_silent_node_that_slurm_marks_down_is_dead(stand_in_slurm) -> None:
    cenv = _cenv(stand_in_slurm.env)
    assert slurm_actions.silent_dead(cenv, [1]) == {1: "n2 is not responding (Not responding, Slurm)"}
    assert slurm_actions.silent_dead(_cenv(stand_in_slurm.env, nodes=("n1", "n3")), [1]) == {}


def test_the_next_attempt_records_a_node_fail(tmp_path: Path, stand_in_slurm) -> None:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    lines: list = []
    record = slurm_actions.reconcile_previous(run, _cenv(stand_in_slurm.env, restart=1), lines.append, wait_s=0)
    assert record is not None and run.read_attempts() == [record]
    assert (record["restart"], record["cause"], record["failed_nodes"][0]["node"]) == (0, "node-failed", "n2")
    assert "NODE_FAIL" in lines[0]
    # once recorded, a second look changes nothing; the first attempt of a job has nothing to reconcile
    assert slurm_actions.reconcile_previous(run, _cenv(stand_in_slurm.env, restart=1), lines.append, wait_s=0) is None
    assert slurm_actions.reconcile_previous(run, _cenv(stand_in_slurm.env, restart=0), lines.append) is None
    assert len(run.read_attempts()) == 1


# ---------------------------------------------------------------------------
# the node launcher: one node fails its pre-flight
# ---------------------------------------------------------------------------


def test_injected_preflight_failure_hook(tmp_path: Path) -> None:
    env = {pf.TEST_FAIL_ENV: "node1"}
    assert pf.injected_failure(env, "n5", 0) is None
    check = pf.injected_failure(env, "n5", 1)
    assert check is not None and not check.ok and check.scope == "node" and "n5" in check.detail
    once = {pf.TEST_FAIL_ENV: f"n5:{tmp_path / 'marker'}"}
    assert pf.injected_failure(once, "n5", 3) is not None and pf.injected_failure(once, "n5", 3) is None


def test_a_node_failing_its_preflight_is_named_and_excluded_not_a_hang(tmp_path: Path, fakes) -> None:  # noqa: F811
    run = make_run(tmp_path, resources={"nodes": 2, "gpus_per_node": 0, "procs_per_node": 1})
    bindir = fakes["bin"]
    log = fakes["scontrol_log"]
    _tool(bindir, "scontrol", f'echo "$@" >> {log}\n'
          'case "$1" in show) [ "$2" = job ] && echo "JobId=4242 ExcNodeList=(null) Partition=debug NumNodes=2"; '
          'exit 0;; esac\nexit 0\n')
    _tool(bindir, "sinfo", 'echo "localhost|allocated|none|Unknown"; echo "127.0.0.1|allocated|none|Unknown"\n'
          'echo "n3|idle|none|Unknown"\n')
    nodelist = "localhost,127.0.0.1"
    extra = {"FAKE_SQUEUE_LEFT": "3:00:00", pf.TEST_FAIL_ENV: "node1"}
    started = time.time()
    n1 = start_node(fakes, run, slurm_env(2, 1, nodelist, **extra), nproc=1, rank0=1, node=1, preflight=True)
    n0 = start_node(fakes, run, slurm_env(2, 0, nodelist, **extra), nproc=1, rank0=0, node=0, preflight=True)
    (c0, r0, o0), (c1, r1, o1) = n0.finish(), n1.finish()
    assert time.time() - started < 60, "a failed pre-flight must end the attempt at once, not by a watchdog"
    assert (c1, r1["reason"], r1["cause"]) == (1, "failed", "preflight-failed"), o1
    assert "preflight failed on 127.0.0.1: injected" in r1["message"]
    assert (c0, r0["cause"], r0["action"]) == (75, "preflight-failed", "requeue"), o0
    (record,) = run.read_attempts()
    assert (record["reason"], record["cause"]) == ("failed", "preflight-failed") and "hung" not in record["message"]
    assert record["excluded"] == {"127.0.0.1": "preflight failed on 127.0.0.1: injected: "
                                                "ERNIE_CLUSTER_TEST_PREFLIGHT_FAIL fails the pre-flight of 127.0.0.1 "
                                                "(a test)"}
    assert "update JobId=4242 ExcNodeList=127.0.0.1" in log.read_text()
    # both nodes wrote their report; node 0's passed with the real imports
    reports = pf.read_reports(run.attempt_log_dir("4242", 0, 0).parent, 2)
    assert reports[0]["ok"] is True and reports[1]["ok"] is False
    assert {c["name"] for c in reports[0]["checks"]} == {"python", "gpus", "rundir", "disk"}


def test_a_single_nodes_failed_preflight_is_retried_and_names_the_node(tmp_path: Path, fakes) -> None:  # noqa: F811
    run = make_run(tmp_path, cluster={"backend": "local"})
    node = start_node(fakes, run, {"ERNIE_CLUSTER_LOCAL_JOB_ID": "local9", "ERNIE_CLUSTER_LOCAL_RESTART": "0",
                                   pf.TEST_FAIL_ENV: "node0"}, preflight=True)
    code, result, out = node.finish()
    # the failure is this machine's (scope node): retried (locally the supervisor restarts the attempt)
    assert (code, result["reason"], result["cause"], result["action"]) == (75, "failed", "preflight-failed",
                                                                           "requeue"), out
    assert not exits(node.control) and "injected" in result["message"] and "fake_launcher.pid" not in out
    (record,) = run.read_attempts()
    assert record["excluded"] == {} and record["not_excluded"] == {}  # locally there is no node to leave out


def test_a_check_failed_on_every_node_blames_no_node_and_is_not_retried(tmp_path: Path) -> None:
    from ernie_cluster.launch.conclude import nodes_at_fault

    attempt_dir = tmp_path / "attempt-7-0"
    for k, host in enumerate(("n1", "n2")):
        (attempt_dir / f"node{k}").mkdir(parents=True)
        report = pf.PreflightReport(host, "py", [pf.Check("python", False, "cannot import paddle", scope="node")])
        pf.write_report(attempt_dir / f"node{k}", report)
    outcomes = {k: att.NodeOutcome("failed", None, f"preflight failed on n{k + 1}", retryable=True,
                                   cause="preflight-failed") for k in (0, 1)}
    for k in (0, 1):
        (attempt_dir / f"node{k}" / "node_result.json").write_text(json.dumps(outcomes[k].to_dict()))
    lines: list = []
    a = SimpleNamespace(node_dir=attempt_dir / "node0",
                        spec=SimpleNamespace(resources=SimpleNamespace(trainers_per_node=1)),
                        cenv=SimpleNamespace(num_nodes=2, node_list=["n1", "n2"], is_slurm=True))
    total, faults, failed = nodes_at_fault(SimpleNamespace(_log=lines.append), a, dict(outcomes))
    assert (total.cause, total.retryable, faults, failed) == ("preflight-failed", False, {}, [])
    assert "failed on every node" in lines[0]
    # on one node only: that node, retried
    pf.write_report(attempt_dir / "node0", pf.PreflightReport("n1", "py", [pf.Check("python", True, "ok")]))
    outcomes[0] = att.NodeOutcome("failed", None, "node 1 failed", retryable=True, cause="peer-failed")
    total, faults, failed = nodes_at_fault(SimpleNamespace(_log=lines.append), a, dict(outcomes))
    assert (total.cause, total.retryable, list(faults)) == ("preflight-failed", True, ["n2"])


def test_a_silent_node_slurm_marks_not_responding_is_a_dead_node(tmp_path: Path, stand_in_slurm) -> None:
    from ernie_cluster.launch.conclude import nodes_at_fault

    attempt_dir = tmp_path / "attempt-4242-0"
    (attempt_dir / "node0").mkdir(parents=True)
    own = crashed(0, 100.0, 0)  # its collective broke when the other node vanished
    (attempt_dir / "node0" / "node_result.json").write_text(json.dumps(own.to_dict()))
    # node 1 wrote nothing: collect_peers classified it from its control directory
    silent = att.NodeOutcome("failed", None, "node 1 reported no result within 60s", retryable=True,
                             cause="trainer-died", ranks=[1])
    cenv = _cenv(stand_in_slurm.env)
    a = SimpleNamespace(node_dir=attempt_dir / "node0", cenv=cenv,
                        spec=SimpleNamespace(resources=SimpleNamespace(trainers_per_node=1)))
    lines: list = []
    total, faults, failed = nodes_at_fault(SimpleNamespace(_log=lines.append), a, {0: own, 1: silent})
    assert (total.cause, total.nodes, total.retryable) == ("node-failed", [1], True)
    assert faults == {"n2": "node-failed: n2 is not responding (Not responding, Slurm)"}
    assert [(f["node"], f["why"]) for f in failed] == [("n2", "n2 is not responding (Not responding, Slurm)")]
    decided = att.decide_attempt(total, att.RequeuePolicy(), job_id="4242", restart=0, on_slurm=True)
    assert (decided.requeue, decided.cause) == (True, "node-failed")
