"""Each way an attempt ends is recorded as what it is: a dead paddle launcher, a dead or crashed trainer,
a hung start, a preemption, a time limit, a local stop signal, a cancel; and each counts against its own
cap in cluster.requeue. Real processes with the stand-ins of test_launch (no paddle, no Slurm)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from test_launch import _slurm_node_env, exits, fakes, local_env, make_run, start_node  # noqa: F401

from ernie_cluster.launch import attempt as att
from ernie_cluster.procs import pid_alive
from ernie_cluster.spec import RequeuePolicy


def _kill_paddle_launcher(node) -> int:
    """SIGKILL the stand-in paddle.distributed.launch while its (setsid) trainers keep running."""
    pid_file = node.control.parent / "fake_launcher.pid"
    deadline = time.time() + 10
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


def _trainer_pids(node) -> list:
    return [int(p.read_text()) for p in node.control.glob("trainer.*.pid")]


# ---------------------------------------------------------------------------
# a dead paddle launcher
# ---------------------------------------------------------------------------


def test_dead_launcher_locally_is_launcher_died_not_a_signal(tmp_path: Path, fakes) -> None:  # noqa: F811
    run = make_run(tmp_path, cluster={"backend": "local", "requeue": {"max_failure_requeues": 0}})
    node = start_node(fakes, run, local_env())
    node.wait_trainers(2)
    time.sleep(0.3)  # a few steps
    _kill_paddle_launcher(node)
    code, result, out = node.finish()
    # the trainers saved at a step boundary: nothing lost, but no signal came from outside
    assert result["reason"] == "stopped" and result["cause"] == "launcher-died", out
    assert result["signal"] is None, out
    assert {r["reason"] for r in exits(node.control).values()} == {"stopped"}
    (record,) = run.read_attempts()
    assert (record["reason"], record["cause"], record["signal"]) == ("stopped", "launcher-died", None), record
    assert "paddle.distributed.launch exited" in record["message"] and "no step lost" in record["message"]
    # max_failure_requeues=0: not restarted, and the message says how to go on
    assert record["action"] == "requeue-denied" and code == att.EXIT_REQUEUE_DENIED, out
    assert "cluster.requeue.max_failure_requeues=0" in record["message"] and "--resume" in record["message"]
    assert all(not pid_alive(pid) for pid in _trainer_pids(node))


def test_dead_launcher_on_slurm_is_not_a_preemption(tmp_path: Path, fakes) -> None:  # noqa: F811
    run = make_run(tmp_path, cluster={"backend": "slurm", "time": "01:00:00",
                                      "requeue": {"signal_lead_s": 30, "max_failure_requeues": 1}})
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="2:00:00"))
    node.wait_trainers(2)
    time.sleep(0.3)
    _kill_paddle_launcher(node)
    code, result, out = node.finish()
    assert code == att.EXIT_STOPPED and result["action"] == "requeue", out
    assert (result["reason"], result["cause"], result["signal"]) == ("stopped", "launcher-died", None), out
    assert "requeue 4242" in fakes["scontrol_log"].read_text()
    (record,) = run.read_attempts()
    assert (record["cause"], record["signal"], record["action"]) == ("launcher-died", None, "requeue"), record
    # it used the failure cap, not the preemption budget: a second death of the same job is not requeued
    node = start_node(fakes, run, _slurm_node_env(SLURM_RESTART_COUNT="1", FAKE_SQUEUE_LEFT="2:00:00"))
    node.wait_trainers(2)
    time.sleep(0.3)
    _kill_paddle_launcher(node)
    code, result, out = node.finish()
    assert code == att.EXIT_REQUEUE_DENIED and result["action"] == "requeue-denied", out
    assert "max_failure_requeues=1" in result["message"] and "--resume" in result["message"], out
    assert fakes["scontrol_log"].read_text().count("requeue 4242") == 1


def test_launcher_death_after_a_trainer_failed_blames_the_trainer() -> None:
    from ernie_cluster.launch.node import NodeLauncher

    launcher = NodeLauncher("/nowhere")
    launcher._orphaned = [0]  # rank 1 was already gone when paddle's launcher exited: paddle exits after one
    killed = att.NodeOutcome("failed", 4, "ranks [1] ended without an exit record", retryable=True,
                             cause="trainer-died", ranks=[1])
    assert launcher._after_launcher_death(killed, 1).cause == "trainer-died"
    crashed = att.NodeOutcome("failed", 4, "rank 1: boom", retryable=True, cause="crashed", ranks=[1])
    assert launcher._after_launcher_death(crashed, 1).cause == "crashed"
    # the orphans themselves could not stop cleanly: still the launcher's death
    launcher._orphaned = [0, 1]
    stuck = att.NodeOutcome("failed", 4, "ranks [0, 1] ended without an exit record", retryable=True,
                            cause="trainer-died", ranks=[0, 1])
    o = launcher._after_launcher_death(stuck, -9)
    assert (o.cause, o.retryable) == ("launcher-died", True) and "exited (code -9)" in o.message


# ---------------------------------------------------------------------------
# dead and crashed trainers, a hang: each named, with the rank
# ---------------------------------------------------------------------------


def test_dead_trainer_and_crashed_trainer_name_the_rank(tmp_path: Path, fakes) -> None:  # noqa: F811
    run = make_run(tmp_path, cluster={"backend": "local", "requeue": {"max_failure_requeues": 0}})
    code, result, out = start_node(fakes, run, local_env("localA"), mode="crash").finish()  # rank 1: exit 7, no record
    assert code == 1 and (result["reason"], result["cause"], result["signal"]) == ("failed", "trainer-died", None), out
    code, result, out = start_node(fakes, run, local_env("localA", 1), mode="raise").finish()  # rank 1 reports it
    assert code == 1 and (result["reason"], result["cause"], result["signal"]) == ("failed", "crashed", None), out
    first, second = run.read_attempts()
    assert (first["cause"], first["ranks"]) == ("trainer-died", [1]) and "ranks [1]" in first["message"]
    assert (second["cause"], second["ranks"]) == ("crashed", [1]) and "rank 1: RuntimeError: boom" in second["message"]
    # max_failure_requeues=0: not retried, and the message says which cap and how to go on
    assert all("max_failure_requeues=0" in a["message"] and "--resume" in a["message"] for a in (first, second))
    assert [a["action"] for a in (first, second)] == ["none", "none"]


def test_classify_names_causes_and_ranks() -> None:
    def state(pids, exits):
        return att.ControlState(pids=dict(pids), exits=dict(exits))

    o = att.classify_node(state({}, {}), 2, 1)
    assert (o.cause, o.retryable) == ("start-failed", True)
    o = att.classify_node(state({0: 10, 1: 11, 2: 12}, {1: {"reason": "stopped", "step": 3}}), 3, -9)
    assert (o.cause, o.ranks) == ("trainer-died", [0, 2])
    o = att.classify_node(state({0: 10, 1: 11}, {0: {"reason": "stopped", "step": 3},
                                                 1: {"reason": "failed", "error": "x", "kind": "crash"}}), 2, 1)
    assert (o.cause, o.ranks, o.retryable) == ("crashed", [1], True)
    o = att.classify_node(state({0: 10, 1: 11}, {0: {"reason": "failed", "kind": "crash"},
                                                 1: {"reason": "failed", "kind": "nonfinite"}}), 2, 1)
    assert (o.cause, o.retryable) == ("nonfinite", False)
    o = att.classify_node(state({0: 10}, {0: {"reason": "failed", "kind": "setup"}}), 1, 3)
    assert (o.cause, o.retryable) == ("setup", False)
    # a stop agreed with another rank names no signal of its own
    o = att.classify_node(state({0: 10, 1: 11}, {0: {"reason": "stopped", "signal": "peer"},
                                                 1: {"reason": "stopped", "signal": "peer"}}), 2, 0)
    assert (o.reason, o.signal, o.cause) == ("stopped", None, None)


def test_classify_blames_the_trainer_that_ended_first() -> None:
    pids = {0: 10, 1: 11}
    crash = {"reason": "failed", "error": "RuntimeError: boom", "kind": "crash", "time": 100.0}
    # rank 1 reported a crash, then paddle killed rank 0 (last seen running after it): the crash is the cause
    o = att.classify_node(att.ControlState(pids=pids, exits={1: crash}), 2, 1, alive_until={0: 101.0, 1: 99.9})
    assert (o.cause, o.ranks) == ("crashed", [1]) and "then ranks [0] ended without an exit record" in o.message
    # rank 0 vanished (OOM) before rank 1 crashed on its collective: the dead trainer is the cause
    o = att.classify_node(att.ControlState(pids=pids, exits={1: crash}), 2, 1, alive_until={0: 99.0, 1: 99.9})
    assert (o.cause, o.ranks) == ("trainer-died", [0])
    # never seen by the launcher (a silent node's records): the vanished trainer, as before
    o = att.classify_node(att.ControlState(pids=pids, exits={1: crash}), 2, 1)
    assert (o.cause, o.ranks) == ("trainer-died", [0])


def test_a_node_stopped_by_a_failed_peer_neither_hides_the_cause_nor_adds_a_signal(tmp_path: Path,
                                                                                  fakes) -> None:  # noqa: F811
    from test_launch import slurm_env

    run = make_run(tmp_path, resources={"nodes": 2, "gpus_per_node": 0, "procs_per_node": 1})
    nodelist = "localhost,127.0.0.1"
    n1 = start_node(fakes, run, slurm_env(2, 1, nodelist, FAKE_SQUEUE_LEFT="3:00:00"), mode="raise", nproc=1,
                    rank0=1, node=1)
    n0 = start_node(fakes, run, slurm_env(2, 0, nodelist, FAKE_SQUEUE_LEFT="3:00:00"), nproc=1, rank0=0, node=0)
    (c0, r0, o0), (c1, r1, o1) = n0.finish(), n1.finish()
    assert "node 1 failed" in o0, o0  # node 0's launcher stopped its trainer itself (SIGTERM)
    # a crash may be transient: retried under the default max_failure_requeues=3
    assert (c0, r0["reason"], r0["cause"], r0["signal"], r0["action"]) == (75, "failed", "crashed", None,
                                                                           "requeue"), o0
    (record,) = run.read_attempts()
    assert (record["cause"], record["ranks"], record["signal"]) == ("crashed", [1], None), record
    assert "rank 1: RuntimeError: boom" in record["message"]
    # node 1 (127.0.0.1) is at fault; the stand-in Slurm does not answer `scontrol show job`, so it stays in
    assert record["excluded"] == {} and record["not_excluded"] == {"127.0.0.1": "scontrol show job did not answer"}


def test_combine_nodes_keeps_the_root_cause() -> None:
    stopped = att.NodeOutcome("stopped", 7, "saved")
    died = att.NodeOutcome("stopped", 7, "paddle.distributed.launch exited", cause="launcher-died")
    o = att.combine_nodes({0: stopped, 1: died})
    assert (o.reason, o.cause, o.signal) == ("stopped", "launcher-died", None) and o.message.startswith("node 1:")
    usr1 = att.NodeOutcome("stopped", 7, "saved", signal="SIGUSR1")
    assert att.combine_nodes({0: usr1, 1: stopped}).signal == "SIGUSR1"
    # node 0 stopped because node 1 failed: node 1's crash is the cause, not node 0's killed trainers
    follower = att.NodeOutcome("failed", 7, "node 1 failed", retryable=True, cause="peer-failed", ranks=[0])
    crashed = att.NodeOutcome("failed", 7, "rank 1: boom", retryable=True, cause="crashed", ranks=[1])
    o = att.combine_nodes({0: follower, 1: crashed})
    assert (o.cause, o.ranks, o.retryable) == ("crashed", [1], True)
    killed = att.NodeOutcome("failed", 7, "ranks [3]", retryable=True, cause="trainer-died", ranks=[3])
    assert att.combine_nodes({0: crashed, 1: killed}).cause == "trainer-died"  # its peers crash after it
    nan = att.NodeOutcome("failed", 7, "NaN", cause="nonfinite", ranks=[2])
    o = att.combine_nodes({0: crashed, 1: nan})
    assert (o.cause, o.retryable) == ("nonfinite", False)
    back = att.NodeOutcome.from_dict(dict(crashed.to_dict(), launcher_exit_code=1, node="n2"))
    assert back == crashed


# ---------------------------------------------------------------------------
# each cause against its own cap
# ---------------------------------------------------------------------------


def _requeued(cause: str, reason: str = "stopped", job: str = "7") -> dict:
    return {"job_id": job, "reason": reason, "cause": cause, "action": "requeue"}


def test_each_cause_counts_against_its_cap() -> None:
    p = RequeuePolicy(max_requeues=10, max_timeout_requeues=2, max_failure_requeues=2)
    history = [_requeued("preempted"), _requeued("preempted"), _requeued("preempted"), _requeued("timeout"),
               _requeued("launcher-died")]
    # a preemption: only max_requeues
    assert att.decide_requeue("stopped", "preempted", 5, p, history, "7").requeue is True
    assert att.decide_requeue("stopped", "signal", 5, p, history, "7").requeue is True
    # a time limit: max_timeout_requeues, untouched by the preemptions and the launcher death
    assert att.decide_requeue("stopped", "timeout", 5, p, history, "7").requeue is True
    d = att.decide_requeue("stopped", "timeout", 6, p, history + [_requeued("timeout")], "7")
    assert (d.requeue, d.action) == (False, "requeue-denied") and "max_timeout_requeues=2" in d.why
    # a dead launcher: the failure cap, shared with dead and crashed trainers and hangs, not preemptions
    d = att.decide_requeue("stopped", "launcher-died", 5, p, history, "7")
    assert (d.requeue, d.action) == (True, "requeue") and "retry 2 of at most 2" in d.why
    for cause in ("launcher-died", "trainer-died", "crashed", "hung", "start-failed"):
        reason = "stopped" if cause == "launcher-died" else "failed"
        d = att.decide_requeue(reason, cause, 6, p, history + [_requeued("crashed", "failed")], "7")
        assert d.requeue is False and "max_failure_requeues=2" in d.why, cause
        assert d.action == ("requeue-denied" if reason == "stopped" else "none")  # a stopped one saved: exit 5
    # records from before the causes were told apart ("failure") count too; other jobs' never
    assert att.requeues_used([_requeued("failure", "failed"), _requeued("crashed", "failed", job="8")], "7",
                             where=att.is_failure) == 1
    # max_requeues caps every requeue, whatever the cause
    for reason, cause in (("stopped", "preempted"), ("stopped", "launcher-died"), ("failed", "crashed")):
        d = att.decide_requeue(reason, cause, 10, p, [], "7")
        assert d.requeue is False and "max_requeues=10" in d.why
    # never: a deterministic failure, a completed attempt
    for cause in ("nonfinite", "setup", "data", "error"):
        assert att.decide_requeue("failed", cause, 0, p, [], "7") == att.RequeueDecision(False, "none", "")
    assert att.decide_requeue("completed", None, 0, p).action == "none"


def test_default_policy_retries_three_transient_failures_then_ends_the_run() -> None:
    for cause in ("launcher-died", "node-failed", "hung", "crashed"):
        d = att.decide_requeue("stopped" if cause == "launcher-died" else "failed", cause, 0, RequeuePolicy(), [], "7")
        assert (d.requeue, d.action) == (True, "requeue") and "retry 1 of at most 3" in d.why, cause
    history = [_requeued("launcher-died"), _requeued("node-failed", "failed"), _requeued("hung", "failed")]
    d = att.decide_requeue("stopped", "launcher-died", 3, RequeuePolicy(), history, "7")
    assert (d.requeue, d.action) == (False, "requeue-denied") and "max_failure_requeues=3" in d.why
    assert att.exit_code_for("stopped", d.action) == att.EXIT_REQUEUE_DENIED
    d = att.decide_requeue("stopped", "launcher-died", 0, RequeuePolicy(max_failure_requeues=0), [], "7")
    assert (d.requeue, d.action) == (False, "requeue-denied") and "max_failure_requeues=0" in d.why
    assert att.decide_requeue("stopped", "preempted", 0, RequeuePolicy(), [], "7").requeue is True
    assert att.decide_requeue("stopped", "launcher-died", 0, RequeuePolicy(enabled=False)).action == "requeue-denied"


def test_cause_counts() -> None:
    attempts = [_requeued("preempted"), _requeued("launcher-died"),
                {"job_id": "7", "reason": "stopped", "cause": "launcher-died", "action": "requeue-denied"},
                {"job_id": "9", "reason": "completed", "cause": None, "action": "none"}]
    assert att.cause_counts(attempts) == {"preempted": {"attempts": 1, "requeued": 1},
                                          "launcher-died": {"attempts": 2, "requeued": 1},
                                          "completed": {"attempts": 1, "requeued": 0}}


# ---------------------------------------------------------------------------
# the conclusion of an attempt, without Slurm or processes: attempt.decide_attempt
# ---------------------------------------------------------------------------


def _decide(total: att.NodeOutcome, policy: RequeuePolicy = RequeuePolicy(), **kw) -> att.AttemptVerdict:
    facts = dict(job_id="7", restart=0, on_slurm=True, attempts=[], spec_path="/runs/x/spec.yaml", node="n0",
                 nodes=2, started=100.0, ended=160.0, launcher_rc=0)
    facts.update(kw)
    return att.decide_attempt(total, policy, **facts)


def test_decide_attempt_tells_timeout_from_preemption_by_the_time_left() -> None:
    stopped = att.NodeOutcome("stopped", 40, "2 trainer(s) saved and stopped", signal="SIGUSR2")
    p = RequeuePolicy(signal_lead_s=120)
    v = _decide(stopped, p, remaining_s=150.04)  # within the lead plus the margin: the time limit
    assert (v.cause, v.requeue, v.action, v.exit_code) == ("timeout", True, "requeue", att.EXIT_STOPPED)
    assert v.record == {"job_id": "7", "restart": 0, "node": "n0", "nodes": 2, "reason": "stopped",
                        "cause": "timeout", "ranks": [], "step": 40, "signal": "SIGUSR2", "started": 100.0,
                        "ended": 160.0, "exit_code": 0, "action": "requeue",
                        "message": f"2 trainer(s) saved and stopped; {v.why}", "remaining_s": 150.0,
                        "backend": "slurm", "failed_nodes": [], "excluded": {}, "not_excluded": {},
                        "reconciled": None}
    assert _decide(stopped, p, remaining_s=3600.0).cause == "preempted"
    assert _decide(stopped, p, remaining_s=None).cause == "preempted"  # unknown: not a time limit
    assert _decide(stopped, p, remaining_s=60.0, preempted=True).cause == "preempted"  # Slurm says so
    assert _decide(stopped, p, on_slurm=False).cause == "signal"
    assert _decide(stopped, p, on_slurm=False).record["backend"] == "local"
    # a cause of its own wins over the outside signal
    died = att.NodeOutcome("stopped", 40, "paddle.distributed.launch exited", cause="launcher-died")
    assert _decide(died, p, remaining_s=10.0).cause == "launcher-died"


def test_decide_attempt_applies_the_caps_and_says_how_to_go_on() -> None:
    stopped = att.NodeOutcome("stopped", 40, "saved")
    v = _decide(stopped, RequeuePolicy(max_requeues=3), restart=3)
    assert (v.requeue, v.action, v.exit_code) == (False, "requeue-denied", att.EXIT_REQUEUE_DENIED)
    assert v.record["message"] == ("saved; restart 3 reached cluster.requeue.max_requeues=3; continue from its "
                                   "checkpoint (step 40) with `python -m ernie_cluster submit /runs/x/spec.yaml "
                                   "--resume`")
    # a failure that may be transient: retried (exit 75) within max_failure_requeues, else the run ends (exit 1)
    crashed = att.NodeOutcome("failed", 40, "rank 1: boom", retryable=True, cause="crashed", ranks=[1])
    v = _decide(crashed, RequeuePolicy(max_failure_requeues=1))
    assert (v.record["reason"], v.action, v.exit_code) == ("failed", "requeue", att.EXIT_STOPPED)
    assert v.record["ranks"] == [1] and "--resume" not in v.record["message"]
    v = _decide(crashed, RequeuePolicy(max_failure_requeues=1), restart=1,
                attempts=[{"job_id": "7", "restart": 0, "reason": "failed", "cause": "crashed", "action": "requeue"}])
    assert (v.requeue, v.action, v.exit_code) == (False, "none", att.EXIT_FAILED)
    assert "max_failure_requeues=1" in v.record["message"] and "from the last checkpoint" in v.record["message"]
    # a failure a new attempt would repeat: no requeue, no policy words, no hint
    nan = att.NodeOutcome("failed", 40, "rank 0: loss is NaN", cause="nonfinite", ranks=[0])
    v = _decide(nan, RequeuePolicy(max_failure_requeues=5))
    assert (v.requeue, v.action, v.exit_code, v.why) == (False, "none", att.EXIT_FAILED, "")
    assert v.record["message"] == "rank 0: loss is NaN"
    done = _decide(att.NodeOutcome("completed", 100, "all 2 trainers completed"))
    assert (done.cause, done.action, done.exit_code) == (None, "none", att.EXIT_OK)


def test_decide_attempt_never_requeues_a_cancelled_job() -> None:
    stopped = att.NodeOutcome("stopped", 40, "saved", signal="SIGUSR2")
    v = _decide(stopped, cancelled=True, remaining_s=3600.0)
    assert (v.cause, v.requeue, v.action, v.exit_code) == ("cancelled", False, "none", att.EXIT_STOPPED)
    assert v.record["message"] == "saved; cancelled by `python -m ernie_cluster cancel`"
    # a cancelled job whose trainers failed first: the failure's cause, still no requeue and no resume hint
    crashed = att.NodeOutcome("failed", 40, "rank 1: boom", retryable=True, cause="crashed", ranks=[1])
    v = _decide(crashed, RequeuePolicy(max_failure_requeues=3), cancelled=True)
    assert (v.cause, v.requeue, v.action, v.exit_code) == ("crashed", False, "none", att.EXIT_FAILED)
    assert "--resume" not in v.record["message"]


def test_a_failed_scontrol_requeue_is_recorded_as_such() -> None:
    v = _decide(att.NodeOutcome("stopped", 40, "saved"), remaining_s=3600.0)
    failed = v.requeue_failed("scontrol: error: Job is not requeueable")
    assert (failed.action, failed.exit_code) == ("requeue-failed", att.EXIT_STOPPED)
    assert failed.record["message"] == f"{v.record['message']}; scontrol requeue failed: scontrol: error: Job is " \
                                       f"not requeueable"
    assert v.action == "requeue"  # the verdict it came from is unchanged
    crashed = att.NodeOutcome("failed", 40, "rank 1: boom", retryable=True, cause="crashed", ranks=[1])
    v = _decide(crashed, RequeuePolicy(max_failure_requeues=1)).requeue_failed("timeout")
    assert (v.action, v.exit_code) == ("requeue-failed", att.EXIT_FAILED)


def test_after_launcher_death_is_pure() -> None:
    stopped = att.NodeOutcome("stopped", 9, "2 trainer(s) saved and stopped")
    o = att.after_launcher_death(stopped, -9, [0, 1])
    assert (o.reason, o.cause, o.step) == ("stopped", "launcher-died", 9) and "no step lost" in o.message
    assert stopped.cause is None and stopped.message == "2 trainer(s) saved and stopped"  # not changed
    done = att.NodeOutcome("completed", 9, "all 2 trainers completed")
    assert att.after_launcher_death(done, 0, [0]) is done


# ---------------------------------------------------------------------------
# outside signals: a preemption and a time limit on Slurm, a cancel
# ---------------------------------------------------------------------------


def test_warning_while_paddle_is_still_starting_is_a_stop_not_a_failed_start(tmp_path: Path,
                                                                            fakes) -> None:  # noqa: F811
    run = make_run(tmp_path)
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="2:00:00"), mode="nostart", grace=0.5)
    pid_file = node.control.parent / "fake_launcher.pid"
    deadline = time.time() + 20
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 75 and (result["reason"], result["cause"], result["action"]) == ("stopped", "preempted",
                                                                                   "requeue"), out
    assert "before any trainer started" in result["message"] and result["signal"] == "SIGUSR2", out
    # with no signal, a launcher that starts no trainer is a failed start
    (tmp_path / "b").mkdir()
    run = make_run(tmp_path / "b", cluster={"backend": "local", "requeue": {"max_failure_requeues": 0}})
    code, result, out = start_node(fakes, run, local_env(), nproc=0, mode="complete").finish()
    assert code == 1 and (result["reason"], result["cause"], result["signal"]) == ("failed", "start-failed", None), out


def test_slurm_warning_records_the_signal_that_came_not_the_one_forwarded(tmp_path: Path, fakes) -> None:  # noqa: F811
    run = make_run(tmp_path)
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="2:00:00"))
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR1)  # cluster.requeue.signal may be USR1; the trainers get USR2
    code, result, out = node.finish()
    assert code == 75 and (result["cause"], result["signal"]) == ("preempted", "SIGUSR1"), out
    assert {r["signal"] for r in exits(node.control).values()} == {"SIGUSR2"}
    (record,) = run.read_attempts()
    assert (record["cause"], record["signal"], record["action"]) == ("preempted", "SIGUSR1", "requeue")


def test_cancel_is_cancelled_on_slurm_and_locally(tmp_path: Path, fakes) -> None:  # noqa: F811
    import subprocess
    import sys

    from ernie_cluster.runs import cancel_run

    run = make_run(tmp_path)
    run.write_state({"backend": "slurm", "cancel_requested": {"job_id": "4242", "at": time.time()}})
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="0:30"))  # inside the lead: a timeout otherwise
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert (result["reason"], result["cause"], result["action"]) == ("stopped", "cancelled", "none"), out
    calls = fakes["scontrol_log"].read_text()
    assert "requeue 4242" not in calls and "scancel 4242" in calls  # the job ends CANCELLED, not requeued
    # locally: `cancel` TERMs the supervisor, which TERMs the launcher; the run directory says it was a cancel
    (tmp_path / "local").mkdir()
    run = make_run(tmp_path / "local", cluster={"backend": "local"})
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.write_state({"backend": "local", "supervisor_pid": supervisor.pid})
        node = start_node(fakes, run, local_env(f"local{supervisor.pid}"))
        node.wait_trainers(2)
        assert cancel_run(run) == [f"local supervisor {supervisor.pid}"]
        node.proc.send_signal(signal.SIGTERM)  # what the supervisor does on TERM
        code, result, out = node.finish()
    finally:
        supervisor.kill()
        supervisor.wait()
    assert (result["reason"], result["cause"], result["action"], result["signal"]) == \
        ("stopped", "cancelled", "none", "SIGTERM"), out


def test_status_counts_attempts_per_cause(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from test_launch import REPO

    run = make_run(tmp_path, cluster={"backend": "local"})
    run.write_state({"backend": "local", "name": "x", "supervisor_pid": 0, "restarts": 2})
    for i, (reason, cause, action) in enumerate([("stopped", "preempted", "requeue"),
                                                 ("stopped", "launcher-died", "requeue"),
                                                 ("failed", "crashed", "none")]):
        run.record_attempt({"job_id": "7", "restart": i, "reason": reason, "cause": cause, "action": action})
    cli = [sys.executable, "-m", "ernie_cluster", "status", str(run.root)]
    env = dict(os.environ, COLUMNS="200")
    shown = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, env=env, check=True).stdout
    assert "launcher-died" in shown and "crashed" in shown
    assert "attempts by cause: preempted 1 (1 requeued), launcher-died 1 (1 requeued), crashed 1 (0 requeued)" in shown
    data = json.loads(subprocess.run(cli + ["--json"], capture_output=True, text=True, cwd=REPO, env=env,
                                     check=True).stdout)
    assert data["causes"]["launcher-died"] == {"attempts": 1, "requeued": 1}
