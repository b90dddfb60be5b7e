"""The hang watchdog inside the node launcher, without Slurm and without paddle: the stand-in paddle launcher of
tests/test_launch.py starts beating stand-in trainers (the real heartbeat and stack-dump code, no model). A rank
that stops making progress ends the attempt as `hung` naming it, with every trainer's stacks recorded; a slowed
rank is a straggler in the launcher log and in watchdog.json (what `status` shows); a trainer that beats is not
taken for a hung rendezvous by the start timeout. The same on the real Slurm cluster: tests/test_hang_slurm.py."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

from ernie_cluster.launch.watchdog import SUMMARY
from ernie_cluster.runs import collect_status, log_files, print_status
from test_launch import exits, fakes, local_env, make_run, start_node  # noqa: F401 - fakes: a fixture

BEATING_TRAINER = textwrap.dedent('''
    # A trainer stand-in that beats like ernie_cluster.train.trainer: the stop protocol, heartbeats, stack dumps.
    import sys, time
    from ernie_cluster.train import control
    from ernie_cluster.train.heartbeat import Heartbeat, heartbeat_dir, install_stack_dump, stack_file
    rank, mode = int(sys.argv[1]), sys.argv[2]
    stop = control.StopFlag().install()
    control.write_pid(rank)
    cdir = control.control_dir()
    install_stack_dump(stack_file(cdir.parent, rank))
    hb = Heartbeat(heartbeat_dir(cdir), rank, min_interval_s=0.2)
    if mode != "noready":  # "noready": never past a first collective, but beating
        control.write_ready(rank)
    hb.phase("train")
    step, started = 0, time.time()

    def stuck_in_a_collective():
        time.sleep(600)

    while True:
        if stop:
            control.write_exit(rank, "stopped", step, signal=stop.signal_name)
            sys.exit(0)
        if time.time() - started >= (4.0 if mode == "noready" else 12.0):
            hb.phase("done")
            control.write_exit(rank, "completed", step)
            sys.exit(0)
        t0 = time.perf_counter()
        busy = 0.3 if mode == "straggler" and rank == 1 else 0.0
        time.sleep(0.05 + busy)
        if mode == "hung" and rank == 1 and step >= 10:
            stuck_in_a_collective()
        step += 1
        hb.step(step, time.perf_counter() - t0, busy_s=busy + 0.001)
''')

SHORT = {"enabled": True, "step_s_min": 2.0, "warmup_s": 2.0}  # seconds: the defaults are minutes


def test_a_rank_without_progress_ends_the_attempt_as_hung_with_its_stacks(tmp_path: Path, fakes) -> None:
    (fakes["dir"] / "trainer.py").write_text(BEATING_TRAINER)
    run = make_run(tmp_path, cluster={"backend": "local", "watchdog": SHORT, "requeue": {"max_failure_requeues": 1}})
    node = start_node(fakes, run, local_env(), mode="hung")
    node.wait_trainers(2)
    started = time.time()
    code, result, out = node.finish(timeout=60)
    assert code == 75 and (result["reason"], result["cause"], result["action"]) == ("failed", "hung", "requeue"), out
    assert time.time() - started < 30, out  # limit 2 s, a check every 5 s, the stacks, TERM then KILL (2 s)
    (record,) = run.read_attempts()
    assert record["ranks"] == [1] and "hung on node 0" in record["message"] and "ranks [1]" in record["message"]
    assert "rank 1 (pid" in record["message"] and "silent" in record["message"] and "in train after step" in record["message"], record
    node_dir = node.control.parent
    for rank in (0, 1):  # every trainer of the node, the waiting one too
        stacks = (node_dir / f"stacks.rank{rank}.txt").read_text()
        assert "most recent call first" in stacks, stacks
    assert "stuck_in_a_collective" in (node_dir / "stacks.rank1.txt").read_text()
    summary = json.loads((node_dir / SUMMARY).read_text())
    assert [h["rank"] for h in summary["hung"]] == [1]
    result_file = json.loads((node_dir / "node_result.json").read_text())
    assert result_file["cause"] == "hung" and "preliminary" not in result_file  # the final result replaced it
    assert {p.name for p in log_files(run) if p.name.startswith("stacks.")} == {"stacks.rank0.txt", "stacks.rank1.txt"}


def test_a_slowed_rank_is_a_straggler_in_the_log_and_in_status(tmp_path: Path, fakes, capsys) -> None:
    (fakes["dir"] / "trainer.py").write_text(BEATING_TRAINER)
    run = make_run(tmp_path, cluster={"backend": "local", "watchdog": SHORT})
    run.write_state({"backend": "local", "name": "x", "supervisor_pid": 0, "local_state": "RUNNING"})
    node = start_node(fakes, run, local_env(), mode="straggler")
    deadline = time.time() + 30
    while time.time() < deadline:  # `status` while the run trains
        status = collect_status(run)
        if status.watchdog and status.watchdog["stragglers"]:
            break
        time.sleep(0.5)
    view = status.watchdog
    assert view and [s["rank"] for s in view["stragglers"]] == [1] and view["hung"] == [], view
    assert view["attempt"] == "attempt-local1-0" and view["stragglers"][0]["fastest_rank"] == 0
    print_status(status)
    shown = capsys.readouterr().out
    assert "WARNING straggler rank 1" in shown and "attempt-local1-0" in shown, shown
    code, result, out = node.finish(timeout=60)
    assert code == 0 and result["reason"] == "completed", out
    assert re.search(r"WARNING: straggler rank 1 on \S+: median busy time 0.30\ds/step vs 0.001s on rank 0", out), out
    assert "hung" not in out.replace("hang watchdog", ""), out
    assert not [p for p in log_files(run) if p.name.startswith("stacks.")]  # no dump asked for: none listed


def test_a_beating_trainer_is_left_to_the_hang_watchdog_by_the_start_timeout(tmp_path: Path, fakes) -> None:
    (fakes["dir"] / "trainer.py").write_text(BEATING_TRAINER)
    run = make_run(tmp_path, cluster={"backend": "local", "watchdog": SHORT})
    code, result, out = start_node(fakes, run, local_env(), mode="noready", start_timeout=1.0).finish(timeout=60)
    assert code == 0 and result["reason"] == "completed", out
    assert "first collective" not in out
    # with the hang watchdog off, the start timeout covers every trainer not past its first collective again
    run2 = make_run(tmp_path / "off", cluster={"backend": "local", "watchdog": {**SHORT, "enabled": False},
                                               "requeue": {"max_failure_requeues": 0}})
    code, result, out = start_node(fakes, run2, local_env(), mode="noready", start_timeout=1.0).finish(timeout=60)
    assert code == 1 and result["cause"] == "hung" and "first collective within 1s" in out, out
