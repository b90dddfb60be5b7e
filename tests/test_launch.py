"""The launch layer without Slurm and without paddle: hostlists, cluster environments, command lines,
attempt classification, requeue policy, data markers, and the node launcher with real processes and
real signals (a small stand-in for paddle.distributed.launch that starts trainers with setsid)."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from ernie_cluster.launch import attempt as att
from ernie_cluster.launch.cluster_env import (
    ClusterEnvError,
    HostlistError,
    LocalEnvironment,
    SlurmEnvironment,
    derive_port,
    expand_hostlist,
    parse_slurm_duration,
)
from ernie_cluster.launch.command import CommandError, build_launch_command, paddle_job_id, select_devices
from ernie_cluster.launch.node import NodeLauncher
from ernie_cluster.launch.prepare import (DataPrepError, marker, run_preparation, tokenize_command, tokenize_corpus,
                                          wait_for_data)
from ernie_cluster.procs import pid_alive
from ernie_cluster.rundir import RunDir
from ernie_cluster.spec import JobSpec, RequeuePolicy

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def make_spec(tmp: Path, **over) -> JobSpec:
    data = {
        "name": "ernie tiny/dapt",
        "output_dir": str(tmp / "run"),
        "cluster": {"backend": "slurm", "time": "01:00:00", "requeue": {"signal_lead_s": 30}},
        "resources": {"nodes": 1, "gpus_per_node": 0, "procs_per_node": 2},
        "data": {"input_prefix": str(tmp / "data" / "corpus"), "vocab_file": str(tmp / "vocab.txt")},
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True},
        "train": {"device": "cpu", "max_steps": 10},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            sub, _, leaf = field.partition("__")
            if leaf:
                data[section].setdefault(sub, {})[leaf] = value
            else:
                data[section][field] = value
        else:
            data[section] = value
    return JobSpec.model_validate(data)


def make_run(tmp: Path, **over) -> RunDir:
    spec = make_spec(tmp, **over)
    run = RunDir(tmp / "run")
    run.root.mkdir(parents=True, exist_ok=True)
    run.spec.write_text(spec.to_yaml())
    return run


def slurm_env(n: int, rank: int, nodelist: str, job: str = "4242", **extra) -> Dict[str, str]:
    env = {"SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": nodelist, "SLURM_JOB_NUM_NODES": str(n),
           "SLURM_NNODES": str(n), "SLURM_NODEID": str(rank), "SLURM_LOCALID": "0", "SLURM_PROCID": str(rank)}
    if n > 1:
        env.update({"SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_NUM_NODES": str(n)})
    env.update(extra)
    return env


def fake_resolver(name: str) -> Optional[str]:
    """Every name resolves to a distinct 10.x address, except names starting with 'nores'."""
    if name.startswith("nores"):
        return None
    if name.count(".") == 3 and all(p.isdigit() for p in name.split(".")):
        return name
    h = sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 65000
    return f"10.{h // 250 % 250}.{h % 250}.{len(name)}"


# ---------------------------------------------------------------------------
# hostlists
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("expr, expected", [
    ("n1", ["n1"]),
    ("n[1-2]", ["n1", "n2"]),
    ("a,b,c", ["a", "b", "c"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),
    ("gpu[001-003,070]", ["gpu001", "gpu002", "gpu003", "gpu070"]),
    ("gpu[098-101]", ["gpu098", "gpu099", "gpu100", "gpu101"]),
    ("gpu[1,3-4],cpu-b[07-08]", ["gpu1", "gpu3", "gpu4", "cpu-b07", "cpu-b08"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("n[1-2].ib", ["n1.ib", "n2.ib"]),
    ("x[0-1]y,z", ["x0y", "x1y", "z"]),
    ("  n[3] ", ["n3"]),
    ("host-a.example.org", ["host-a.example.org"]),
    ("n[0-0]", ["n0"]),
])
def test_expand_hostlist(expr: str, expected: List[str]) -> None:
    assert expand_hostlist(expr) == expected


def test_expand_hostlist_large_and_mixed() -> None:
    names = expand_hostlist("gpu[001-064,070],gpu-b[1-3]")
    assert len(names) == 68
    assert names[:3] == ["gpu001", "gpu002", "gpu003"] and names[63:] == ["gpu064", "gpu070", "gpu-b1", "gpu-b2", "gpu-b3"]
    assert len(set(names)) == 68
    assert expand_hostlist("c[0001-1024]")[-1] == "c1024"


@pytest.mark.parametrize("expr", ["", "   ", "n[1-2", "n1-2]", "n[[1-2]]", "n[2-1]", "n[]", "n[a-b]", "n[1,,2]",
                                  "n1,,n2", ",n1", "n1,", "n[1-2-3]", "n[1 - 2]", "n 1", "n[-2]"])
def test_expand_hostlist_errors(expr: str) -> None:
    with pytest.raises(HostlistError):
        expand_hostlist(expr)


def test_parse_slurm_duration() -> None:
    assert parse_slurm_duration("1:30") == 90
    assert parse_slurm_duration("01:00:05") == 3605
    assert parse_slurm_duration("2-03:04:05") == 2 * 86400 + 3 * 3600 + 4 * 60 + 5
    assert parse_slurm_duration("45") == 45
    for text in ("UNLIMITED", "NOT_SET", "INVALID", "", "1:2:3:4"):
        assert parse_slurm_duration(text) is None


# ---------------------------------------------------------------------------
# cluster environments
# ---------------------------------------------------------------------------


def test_port_derivation_is_deterministic_and_safe() -> None:
    assert derive_port("4242") == derive_port("4242") == 20000 + 4242 % 12000
    assert derive_port("4242", 29500) == 29500 == derive_port("4242", 29500, restart=3)
    # a requeued attempt (same job id) moves to another port; every node computes the same one
    assert len({derive_port("4242", restart=r) for r in range(5)}) == 5
    for job in ("1", "11999", "12000", "987654321", "local123", "abc"):
        assert 20000 <= derive_port(job) < 32000  # below the ephemeral and paddle's trainer port ranges


@pytest.mark.parametrize("n, nodelist", [
    (1, "gpu001"), (2, "n[1-2]"), (16, "gpu[001-016]"), (128, "a[000-099],b[1-28]"), (68, "gpu[001-064,070],gpu-b[1-3]"),
])
def test_slurm_environment_every_rank_agrees(n: int, nodelist: str) -> None:
    envs = [SlurmEnvironment.from_env(slurm_env(n, r, nodelist, SLURMD_NODENAME=expand_hostlist(nodelist)[r]),
                                      resolver=fake_resolver, use_scontrol=False) for r in range(n)]
    assert {(e.main_address, e.main_port) for e in envs} == {(fake_resolver(expand_hostlist(nodelist)[0]), derive_port("4242"))}
    assert [e.node_rank for e in envs] == list(range(n))
    assert all(e.num_nodes == n and e.restart_count == 0 for e in envs)
    assert [e.node_name for e in envs] == expand_hostlist(nodelist)


def test_slurm_environment_fields() -> None:
    e = SlurmEnvironment.from_env(slurm_env(2, 1, "n[1-2]", SLURM_RESTART_COUNT="3", SLURM_JOB_END_TIME="2000000000"),
                                  master_port=31000, resolver=fake_resolver, use_scontrol=False)
    assert (e.job_id, e.restart_count, e.node_rank, e.num_nodes, e.node_list) == ("4242", 3, 1, 2, ["n1", "n2"])
    assert e.main_port == 31000 and e.end_time == 2000000000.0 and e.attempt == "4242-3"
    assert e.is_slurm


@pytest.mark.parametrize("env, fragment", [
    ({}, "SLURM_JOB_ID"),
    (slurm_env(3, 0, "n[1-2]"), "node list has 2 names"),
    (slurm_env(2, 2, "n[1-2]"), "node rank 2 is outside"),
    (slurm_env(2, 0, "n[1-2]", SLURM_LOCALID="1"), "once per node"),
    (slurm_env(2, 1, "n[1-2]", SLURMD_NODENAME="n1"), "this node is 'n1'"),
    ({**slurm_env(2, 0, "n[1-2]"), "SLURM_STEP_ID": "", "SLURM_STEP_NODELIST": "", "SLURM_STEP_NUM_NODES": ""}, "srun"),
    (slurm_env(2, 0, "n[1-2"), "cannot expand"),
    ({k: v for k, v in slurm_env(2, 0, "n[1-2]").items() if k != "SLURM_NODEID"}, "SLURM_NODEID"),
    (slurm_env(2, 0, "n[1-2]", SLURM_RESTART_COUNT="x"), "not an integer"),
    (slurm_env(2, 0, "n[1,1]"), "repeats"),
])
def test_slurm_environment_errors(env: Dict[str, str], fragment: str) -> None:
    with pytest.raises(ClusterEnvError, match=None) as info:
        SlurmEnvironment.from_env(env, resolver=fake_resolver, use_scontrol=False)
    assert fragment in str(info.value)


def test_main_address_fallbacks() -> None:
    env = slurm_env(2, 0, "nores[1-2]")
    with pytest.raises(ClusterEnvError, match="does not resolve"):
        SlurmEnvironment.from_env(env, resolver=fake_resolver, use_scontrol=False)
    e = SlurmEnvironment.from_env({**env, "ERNIE_CLUSTER_MASTER_ADDR": "10.9.8.7"}, resolver=fake_resolver, use_scontrol=False)
    assert e.main_address == "10.9.8.7"
    e = SlurmEnvironment.from_env(env, resolver=fake_resolver, master_addr="10.1.1.1", use_scontrol=False)
    assert e.main_address == "10.1.1.1"


def test_main_address_from_scontrol_node_addr(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text("#!/bin/sh\necho \"NodeName=$3 Arch=x86_64 NodeAddr=10.20.30.40 NodeHostName=h\"\n")
    (bindir / "scontrol").chmod(0o755)
    env = {**slurm_env(2, 1, "nores[1-2]"), "PATH": f"{bindir}:/usr/bin:/bin"}
    assert SlurmEnvironment.from_env(env, resolver=fake_resolver).main_address == "10.20.30.40"


def test_loopback_host_entry_gives_way_to_slurm_node_addr(tmp_path: Path) -> None:
    # Debian maps a machine's own name to 127.0.1.1; the other nodes must get its NodeAddr instead.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {**slurm_env(2, 0, "gpu[1-2]"), "PATH": f"{bindir}:/usr/bin:/bin"}
    loopback = lambda name: "127.0.1.1"  # noqa: E731
    (bindir / "scontrol").write_text("#!/bin/sh\necho \"NodeName=$3 NodeAddr=10.20.30.41 NodeHostName=$3\"\n")
    (bindir / "scontrol").chmod(0o755)
    assert SlurmEnvironment.from_env(env, resolver=loopback).main_address == "10.20.30.41"
    # all "nodes" on one machine (the local test cluster): Slurm says loopback too, so loopback stays
    (bindir / "scontrol").write_text("#!/bin/sh\necho \"NodeName=$3 NodeAddr=127.0.0.1 NodeHostName=vm\"\n")
    assert SlurmEnvironment.from_env(env, resolver=loopback).main_address == "127.0.1.1"


def test_real_resolver_localhost() -> None:
    e = SlurmEnvironment.from_env(slurm_env(1, 0, "localhost"), use_scontrol=False)
    assert e.main_address.startswith("127.")


def test_local_environment() -> None:
    e = LocalEnvironment.from_env({"ERNIE_CLUSTER_LOCAL_JOB_ID": "local77", "ERNIE_CLUSTER_LOCAL_RESTART": "2"})
    assert (e.job_id, e.restart_count, e.node_rank, e.num_nodes, e.main_address) == ("local77", 2, 0, 1, "127.0.0.1")
    assert e.main_port == derive_port("local77", restart=2) and not e.is_slurm and e.end_time is None
    with pytest.raises(ClusterEnvError):
        LocalEnvironment.from_env({"ERNIE_CLUSTER_LOCAL_JOB_ID": "a b"})


def test_query_end_time() -> None:
    e = SlurmEnvironment.from_env(slurm_env(1, 0, "n1"), resolver=fake_resolver, use_scontrol=False)
    now = time.time()
    end = e.query_end_time(lambda args: "1:30\n" if args[0] == "squeue" else None)
    assert abs(end - (now + 90)) < 5
    end = e.query_end_time(lambda args: None if args[0] == "squeue" else "JobId=4242 EndTime=2030-01-02T03:04:05 Deadline=N/A")
    assert time.localtime(end)[:6] == (2030, 1, 2, 3, 4, 5)
    assert e.query_end_time(lambda args: "UNLIMITED\n" if args[0] == "squeue" else "EndTime=Unknown") is None


# ---------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------


def _value(argv: List[str], flag: str) -> Optional[str]:
    head = argv[: argv.index("-u")] if "-u" in argv else argv
    return head[head.index(flag) + 1] if flag in head else None


@pytest.mark.parametrize("n, nodelist", [(1, "gpu001"), (2, "n[1-2]"), (16, "gpu[001-016]"),
                                         (128, "gpu[001-128]"), (68, "gpu[001-064,070],gpu-b[1-3]")])
@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_commands_for_every_rank(tmp_path: Path, n: int, nodelist: str, device: str) -> None:
    spec = make_spec(tmp_path, resources={"nodes": n, "gpus_per_node": 4 if device == "gpu" else 0,
                                          **({} if device == "gpu" else {"procs_per_node": 3})},
                     train={"device": device, "max_steps": 10})
    run = RunDir(tmp_path / "run")
    argvs = []
    for r in range(n):
        cenv = SlurmEnvironment.from_env(slurm_env(n, r, nodelist, job="987654"), resolver=fake_resolver,
                                         use_scontrol=False)
        argvs.append(build_launch_command(spec, run, cenv, python="/opt/py/bin/python3"))
    for r, argv in enumerate(argvs):
        assert argv[:3] == ["/opt/py/bin/python3", "-m", "paddle.distributed.launch"]
        assert argv[-6:] == ["/opt/py/bin/python3", "-u", "-m", "ernie_cluster.train", "--run-dir", str(run.root)]
        assert _value(argv, "--job_id") == "ernie-tiny-dapt-987654"
        assert _value(argv, "--log_dir") == str(run.attempt_log_dir("987654", 0, r))
        if device == "gpu":
            assert _value(argv, "--devices") == "0,1,2,3" and "--nproc_per_node" not in argv
        else:
            assert _value(argv, "--nproc_per_node") == "3" and "--devices" not in argv
        if n == 1:
            assert "--master" not in argv and "--nnodes" not in argv and "--rank" not in argv
        else:
            assert _value(argv, "--nnodes") == str(n)
    if n > 1:
        masters = {_value(a, "--master") for a in argvs}
        first = fake_resolver(expand_hostlist(nodelist)[0])
        assert masters == {f"{first}:{derive_port('987654')}"}
        assert sorted(int(_value(a, "--rank")) for a in argvs) == list(range(n))
    assert len({_value(a, "--log_dir") for a in argvs}) == n


def test_command_host_and_module(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, resources={"nodes": 2, "gpus_per_node": 2}, train={"device": "gpu", "max_steps": 10})
    cenv = SlurmEnvironment.from_env(slurm_env(2, 1, "n[1-2]", SLURM_RESTART_COUNT="4"), resolver=fake_resolver,
                                     use_scontrol=False)
    argv = build_launch_command(spec, RunDir(tmp_path / "run"), cenv, python="py", visible_devices="6,7",
                                host="10.0.0.2", train_module="fake.train")
    assert _value(argv, "--host") == "10.0.0.2" and _value(argv, "--devices") == "6,7"
    assert argv[-4:-1] == ["-m", "fake.train", "--run-dir"]
    assert _value(argv, "--log_dir").endswith("logs/attempt-4242-4/node1")
    with pytest.raises(CommandError):
        build_launch_command(spec, RunDir(tmp_path / "run"), cenv, python="py", host="n2")


def test_select_devices() -> None:
    assert select_devices(4, None) == ["0", "1", "2", "3"]
    assert select_devices(2, "3,5,7") == ["3", "5"]
    assert select_devices(2, "all") == ["0", "1"]
    with pytest.raises(CommandError, match="shows only 1"):
        select_devices(2, "0")
    with pytest.raises(CommandError):
        select_devices(1, "NoDevFiles")


def test_paddle_job_id() -> None:
    assert paddle_job_id("my run", "123") == "my-run-123"
    assert paddle_job_id("ünï/ç;$(x)", "55") == "n-x-55"
    long = paddle_job_id("a" * 200, "123456789")
    assert len(long) <= 80 and long.endswith("-123456789")


def test_launch_environment(tmp_path: Path) -> None:
    from ernie_cluster.launch.command import launch_environment

    env = {**slurm_env(2, 1, "n[1-2]", SLURM_RESTART_COUNT="3"),
           "HOME": "/home/u", "HF_TOKEN": "x", "PADDLE_MASTER": "1.2.3.4:9", "PYTHONPATH": "/elsewhere"}
    child, secrets, overrides = launch_environment(env, tmp_path / "control")
    assert (secrets, overrides) == (["HF_TOKEN"], ["PADDLE_MASTER"])
    assert "HF_TOKEN" not in child and "PADDLE_MASTER" not in child and child["HOME"] == "/home/u"
    assert child["ERNIE_CLUSTER_CONTROL_DIR"] == str(tmp_path / "control") and child["PYTHONUNBUFFERED"] == "1"
    assert [k for k in child if k.startswith("ERNIE_CLUSTER_")] == ["ERNIE_CLUSTER_CONTROL_DIR"]
    assert child["SLURM_RESTART_COUNT"] == "3" and child["SLURM_JOB_ID"] == env["SLURM_JOB_ID"]  # inherited
    assert env["PADDLE_MASTER"] == "1.2.3.4:9"  # the node's own environment is left as it was


def test_open_node_dir_keeps_an_earlier_run_of_the_attempt_aside(tmp_path: Path) -> None:
    from ernie_cluster.launch.exchange import NODE_RESULT, open_node_dir

    run = RunDir(tmp_path / "run")
    cenv = LocalEnvironment.from_env({"ERNIE_CLUSTER_LOCAL_JOB_ID": "local9"})
    node_dir = open_node_dir(run, cenv)
    assert node_dir == run.attempt_log_dir("local9", 0, 0) and (node_dir / "control").is_dir()
    (node_dir / "control" / "trainer.0.pid").write_text("123\n")
    (node_dir / NODE_RESULT).write_text("{}\n")
    assert open_node_dir(run, cenv) == node_dir
    assert not any((node_dir / "control").iterdir()) and not (node_dir / NODE_RESULT).exists()
    assert len(list(node_dir.glob("control.stale-*"))) == 1 and len(list(node_dir.glob(f"{NODE_RESULT}.stale-*"))) == 1


def test_launch_result_adopts_node0_verdict() -> None:
    from ernie_cluster.launch.results import LaunchResult

    result = LaunchResult(reason="stopped", exit_code=att.EXIT_STOPPED, message="node 1 saved", node_rank=1)
    result.adopt({"reason": "stopped", "exit_code_node": 5, "cause": "timeout", "action": "requeue-denied",
                  "message": "denied"})
    assert (result.exit_code, result.cause, result.action, result.message, result.node_rank) == \
        (5, "timeout", "requeue-denied", "denied", 1)


# ---------------------------------------------------------------------------
# classification and requeue policy
# ---------------------------------------------------------------------------


def _state(pids: Dict[int, int], exits: Dict[int, dict]) -> att.ControlState:
    return att.ControlState(pids=dict(pids), exits=dict(exits))


def test_classify_node() -> None:
    done = {0: {"reason": "completed", "step": 10}, 1: {"reason": "completed", "step": 10}}
    assert att.classify_node(_state({0: 1, 1: 2}, done), 2, 0).reason == "completed"
    stopped = {0: {"reason": "stopped", "step": 7, "signal": "SIGUSR2", "time": 5.0},
               1: {"reason": "stopped", "step": 7, "signal": "SIGUSR2", "time": 4.0}}
    o = att.classify_node(_state({0: 1, 1: 2}, stopped), 2, 1, stop_requested=True)  # launcher rc 1: still clean
    assert (o.reason, o.step, o.signal, o.stopped_at) == ("stopped", 7, "SIGUSR2", 4.0)
    o = att.classify_node(_state({0: 1, 1: 2}, {0: stopped[0], 1: {"reason": "failed", "step": 7, "error": "loss is NaN"}}), 2, 1)
    assert o.reason == "failed" and "loss is NaN" in o.message
    o = att.classify_node(_state({0: 1, 1: 2}, {0: stopped[0]}), 2, -9)
    assert o.reason == "failed" and "ranks [1]" in o.message and "-9" in o.message
    o = att.classify_node(_state({}, {}), 2, 1)
    assert o.reason == "failed" and "no trainer started" in o.message
    o = att.classify_node(_state({0: 1}, {0: {"reason": "weird"}}), 1, 0)
    assert o.reason == "failed"


def test_combine_nodes() -> None:
    c, s, f = (att.NodeOutcome("completed", 10), att.NodeOutcome("stopped", 7, stopped_at=3.0),
               att.NodeOutcome("failed", 7, "boom"))
    assert att.combine_nodes({0: c, 1: c}).reason == "completed"
    assert att.combine_nodes({0: s, 1: c}).reason == "stopped"
    r = att.combine_nodes({0: s, 1: f})
    assert r.reason == "failed" and "node 1: boom" in r.message


def test_stop_cause_uses_remaining_time_not_signal_order() -> None:
    assert att.stop_cause(100, 120) == "timeout"
    assert att.stop_cause(200, 120) == "timeout"  # within the lead + 90 s margin
    assert att.stop_cause(211, 120) == "preempted"
    assert att.stop_cause(3 * 3600, 120) == "preempted"
    assert att.stop_cause(None, 120) == "preempted"
    assert att.stop_cause(-5, 120) == "timeout"
    assert att.stop_cause(10, 120, preempted=True) == "preempted"
    assert att.stop_cause(10, 120, preempted=False) == att.stop_cause(10, 120, preempted=None) == "timeout"


def test_query_preempted() -> None:
    e = SlurmEnvironment.from_env(slurm_env(1, 0, "n1"), resolver=fake_resolver, use_scontrol=False)
    show = "JobId=4242 JobState=RUNNING PreemptEligibleTime=2026-11-25T14:35:17 PreemptTime={} EndTime=2026-11-25T14:45:17"
    assert e.query_preempted(lambda args: show.format("2026-11-25T14:35:32")) is True
    assert e.query_preempted(lambda args: show.format("None")) is False
    assert e.query_preempted(lambda args: None) is None


def test_requeue_policy() -> None:
    p = RequeuePolicy(max_requeues=3, max_timeout_requeues=1)
    assert att.decide_requeue("completed", None, 0, p).action == "none"
    assert att.decide_requeue("failed", None, 0, p).requeue is False
    assert att.decide_requeue("stopped", "preempted", 2, p).requeue is True
    d = att.decide_requeue("stopped", "preempted", 3, p)
    assert (d.requeue, d.action) == (False, "requeue-denied") and "max_requeues=3" in d.why
    history = [{"job_id": "7", "cause": "timeout", "action": "requeue"}, {"job_id": "8", "cause": "timeout", "action": "requeue"},
               {"job_id": "7", "cause": "preempted", "action": "requeue"}]
    assert att.decide_requeue("stopped", "timeout", 1, p, history[1:], "7").requeue is True
    d = att.decide_requeue("stopped", "timeout", 2, p, history, "7")
    assert d.action == "requeue-denied" and "max_timeout_requeues=1" in d.why
    assert att.decide_requeue("stopped", "preempted", 2, p, history, "7").requeue is True  # preemptions uncapped by it
    assert att.decide_requeue("stopped", "timeout", 0, RequeuePolicy(enabled=False)).action == "requeue-denied"
    # max_timeout_requeues defaults to max_requeues
    assert att.decide_requeue("stopped", "timeout", 1, RequeuePolicy(max_requeues=2), history, "7").requeue is True
    assert att.exit_code_for("stopped", "requeue-denied") == att.EXIT_REQUEUE_DENIED
    assert att.exit_code_for("stopped", "requeue") == att.EXIT_STOPPED == 75
    assert att.exit_code_for("failed", "none") == 1 and att.exit_code_for("completed", "none") == 0


def test_failure_requeues_only_what_may_be_transient() -> None:
    killed = att.classify_node(_state({0: 1, 1: 2}, {0: {"reason": "stopped", "step": 3}}), 2, -9)
    crashed = att.classify_node(_state({0: 1}, {0: {"reason": "failed", "error": "NCCL error", "kind": "crash"}}), 1, 1)
    nonfinite = att.classify_node(_state({0: 1}, {0: {"reason": "failed", "error": "NaN", "kind": "nonfinite"}}), 1, 4)
    setup = att.classify_node(_state({0: 1}, {0: {"reason": "failed", "error": "incompatible", "kind": "setup"}}), 1, 3)
    assert (killed.retryable, crashed.retryable, nonfinite.retryable, setup.retryable) == (True, True, False, False)
    assert att.combine_nodes({0: crashed, 1: killed}).retryable is True
    assert att.combine_nodes({0: crashed, 1: nonfinite}).retryable is False  # one deterministic failure decides
    p = RequeuePolicy(max_requeues=5, max_failure_requeues=2)
    d = att.decide_requeue("failed", None, 0, RequeuePolicy(), retryable=True)  # default: 3 transient failures
    assert d.requeue is True and "retry 1 of at most 3" in d.why
    assert att.decide_requeue("failed", None, 0, RequeuePolicy(max_failure_requeues=0), retryable=True).requeue is False
    assert att.decide_requeue("failed", None, 0, p, retryable=False).requeue is False
    d = att.decide_requeue("failed", None, 0, p, retryable=True)
    assert (d.requeue, d.action) == (True, "requeue") and "retry 1 of at most 2" in d.why
    history = [{"job_id": "7", "reason": "failed", "action": "requeue"}, {"job_id": "7", "reason": "stopped", "action": "requeue"},
               {"job_id": "7", "reason": "failed", "action": "requeue"}]
    d = att.decide_requeue("failed", None, 3, p, history, "7", retryable=True)
    assert d.requeue is False and "max_failure_requeues=2" in d.why
    assert att.decide_requeue("failed", None, 1, p, history[:2], "7", retryable=True).requeue is True
    assert att.exit_code_for("failed", "requeue") == att.EXIT_STOPPED


# ---------------------------------------------------------------------------
# data preparation markers
# ---------------------------------------------------------------------------


def _noop_prepare(spec, run, log=print, **kw):  # noqa: ARG001
    (run.data_cache / "index.npy").write_text("x")


def _failing_prepare(spec, run, log=print, **kw):  # noqa: ARG001
    raise ValueError("corpus is empty")


def test_run_preparation_markers(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    spec = make_spec(tmp_path)
    run_preparation(spec, run, "9-0", prepare=_noop_prepare, log=lambda m: None)
    assert marker(run, "READY", "9-0").exists() and not marker(run, "PREPARING", "9-0").exists()
    with pytest.raises(DataPrepError, match="corpus is empty"):
        run_preparation(spec, run, "9-1", prepare=_failing_prepare, log=lambda m: None)
    assert "corpus is empty" in json.loads(marker(run, "FAILED", "9-1").read_text())["error"]
    wait_for_data(run, "9-0", log=lambda m: None)  # returns at once
    t = time.monotonic()
    with pytest.raises(DataPrepError, match="node 0 failed.*corpus is empty"):
        wait_for_data(run, "9-1", log=lambda m: None)
    assert time.monotonic() - t < 2


def test_wait_for_data_never_polls_forever(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run.data_cache.mkdir()
    with pytest.raises(DataPrepError, match="did not start preparing"):
        wait_for_data(run, "1-0", start_grace_s=0.3, poll_s=0.05, log=lambda m: None)
    marker(run, "PREPARING", "1-0").write_text("beat 1")  # a heartbeat that never changes again
    with pytest.raises(DataPrepError, match="heartbeat"):
        wait_for_data(run, "1-0", stale_s=0.3, poll_s=0.05, log=lambda m: None)
    with pytest.raises(DataPrepError, match="not ready after"):
        wait_for_data(run, "2-0", timeout_s=0.2, start_grace_s=10, poll_s=0.05, log=lambda m: None)
    with pytest.raises(DataPrepError, match="stopped"):
        wait_for_data(run, "3-0", should_abort=lambda: "signal", poll_s=0.05, log=lambda m: None)


def test_tokenize_command(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, data={"input_prefix": "/d/c", "raw_corpus": "/d/raw.jsonl", "vocab_file": "/d/v.txt"})
    cmd = tokenize_command(spec, "/d/.tmp-c", python="py", workers=8)
    assert cmd == ["py", "-m", "data_tools.create_pretraining_data", "--input", "/d/raw.jsonl", "--vocab-file",
                   "/d/v.txt", "--output-prefix", "/d/.tmp-c", "--chinese", "--cn-whole-word-segment", "--workers", "8"]
    spec = make_spec(tmp_path, data={"input_prefix": "/d/c", "raw_corpus": "/d/raw", "vocab_file": "/v",
                                     "chinese": False})
    assert "--chinese" not in tokenize_command(spec, "/x", python="py")


def test_tokenizing_stops_at_once_on_a_stop_signal_and_leaves_nothing(tmp_path: Path) -> None:
    # A stand-in "python" that writes partial output, then tokenizes "forever" (with a child, like a worker pool).
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nfor a; do case $a in --output-prefix) p=1;; *) [ -n \"$p\" ] && out=$a && p=;; esac; done\n"
                    f"touch \"${{out}}_ids.npy\"\necho tokenizing; sleep 300 & echo $! > {tmp_path}/child.pid; wait\n")
    slow.chmod(0o755)
    spec = make_spec(tmp_path, data={"input_prefix": str(tmp_path / "corpus" / "c"), "raw_corpus": "/d/raw.jsonl",
                                     "vocab_file": "/d/v.txt"})
    started = time.time()
    asked: List[float] = []

    def should_abort() -> Optional[str]:
        asked.append(time.time())
        return "stop signal" if time.time() - started > 1.0 else None

    lines: List[str] = []
    with pytest.raises(DataPrepError, match="tokenizing stopped \\(stop signal\\)"):
        tokenize_corpus(spec, python=str(slow), workers=1, should_abort=should_abort, poll_s=0.05, log=lines.append)
    assert time.time() - started < 8 and len(asked) > 5
    assert any("tokenizing" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == []  # no partial corpus, no log left
    child = int((tmp_path / "child.pid").read_text())  # the tokenizer's own child went with its process group
    deadline = time.time() + 5
    while pid_alive(child):
        assert time.time() < deadline, "the tokenizer's child outlived the stop"
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# the node launcher with real processes and signals
# ---------------------------------------------------------------------------

FAKE_TRAINER = textwrap.dedent('''
    # Stands in for a trainer: the real stop protocol (ernie_cluster.train.control), no paddle.
    import sys, time
    from ernie_cluster.train import control
    rank, mode = int(sys.argv[1]), sys.argv[2]
    stop = control.StopFlag().install()
    control.write_pid(rank)
    if mode != "hang":  # "hang": stuck in the rendezvous, before the first collective
        control.write_ready(rank)
    step = 0
    while True:
        if stop and mode != "ignore":
            time.sleep(0.2)  # "saving"
            control.write_exit(rank, "stopped", step, signal=stop.signal_name)
            sys.exit(0)
        if mode == "complete" and step >= 5:
            control.write_exit(rank, "completed", step); sys.exit(0)
        if mode == "nan" and step >= 3:
            control.write_exit(rank, "failed", step, error="loss is NaN at step %d" % step, kind="nonfinite"); sys.exit(1)
        if mode == "crash" and step >= 3 and rank == 1:
            sys.exit(7)
        if mode == "raise" and step >= 3 and rank == 1:  # an exception the trainer reports
            control.write_exit(rank, "failed", step, error="RuntimeError: boom", kind="crash"); sys.exit(1)
        time.sleep(0.05)
        step += 1
''')

FAKE_LAUNCHER = textwrap.dedent('''
    # Stands in for paddle.distributed.launch: starts trainers with setsid, does not forward USR1/USR2,
    # on TERM terminates its trainers (like paddle), exits with the first non-zero trainer status.
    import os, signal, subprocess, sys
    trainer, mode, nproc, rank0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open(os.path.join(os.environ["ERNIE_CLUSTER_CONTROL_DIR"], "..", "launcher_signals.txt"), "w") as f:
        f.write("USR2 ignored: %s\\n" % (signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN))
    with open(os.path.join(os.environ["ERNIE_CLUSTER_CONTROL_DIR"], "..", "fake_launcher.pid"), "w") as f:
        f.write(str(os.getpid()))
    if mode == "nostart":  # stuck before any trainer starts (paddle's own rendezvous); exits on TERM
        import time
        signal.signal(signal.SIGTERM, lambda n, f: sys.exit(1))
        time.sleep(600)
    procs = [subprocess.Popen([sys.executable, trainer, str(rank0 + i), mode], start_new_session=True)
             for i in range(nproc)]
    def term(n, f):
        for p in procs:
            p.terminate()
    signal.signal(signal.SIGTERM, term)
    import time
    while None in [p.poll() for p in procs]:
        bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if bad:  # like paddle: one trainer failed, stop the others
            term(None, None)
            for p in procs:
                p.wait()
            sys.exit(bad[0])
        time.sleep(0.05)
    bad = [p.returncode for p in procs if p.returncode != 0]
    sys.exit(bad[0] if bad else (1 if mode == "rc1" else 0))
''')

DRIVER = textwrap.dedent('''
    import json, signal, sys
    from ernie_cluster.launch.node import NodeLauncher
    cfg = json.loads(sys.argv[1])
    def prep(spec, run, log=print, should_abort=lambda: None):
        if cfg.get("slow_prep"):  # a long tokenization: it must end soon after a stop signal
            import time
            while not should_abort():
                time.sleep(0.05)
            from ernie_cluster.launch.prepare import DataPrepError
            raise DataPrepError("tokenizing stopped")
    if cfg.get("submitit_like"):
        # what submitit does before calling the function: its own USR2/TERM handlers
        def boom(n, f):
            raise RuntimeError("submitit's handler ran")
        signal.signal(signal.SIGUSR2, boom)
        signal.signal(signal.SIGTERM, boom)
    launcher = NodeLauncher(cfg["run_dir"], local=cfg.get("local"), launcher_argv=cfg["argv"], prepare=prep,
                            stop_grace_s=cfg.get("grace"), peer_wait_s=cfg.get("peer_wait", 10), poll_s=0.05,
                            kill_after_s=cfg.get("kill_after", 45), start_timeout_s=cfg.get("start_timeout"),
                            preflight=cfg.get("preflight", False))  # the pre-flight has tests of its own
    if cfg.get("call"):
        try:
            out = launcher()
        except SystemExit as exc:
            print("RESULT " + json.dumps({"system_exit": exc.code}), flush=True)
            raise
        except Exception as exc:
            print("RESULT " + json.dumps({"raised": type(exc).__name__, "message": str(exc)}), flush=True)
            sys.exit(99)
        print("RESULT " + json.dumps(out), flush=True)
        sys.exit(0)
    result = launcher.run()
    print("RESULT " + json.dumps(result.to_dict()), flush=True)
    sys.exit(result.exit_code)
''')


class Node:
    def __init__(self, proc: subprocess.Popen, control: Path):
        self.proc, self.control = proc, control

    def wait_trainers(self, n: int, timeout: float = 20) -> List[int]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            pids = sorted(self.control.glob("trainer.*.pid")) if self.control.exists() else []
            if len(pids) >= n:
                return [int(p.read_text()) for p in pids]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        out = self.proc.stdout.read() if self.proc.poll() is not None else ""
        raise AssertionError(f"trainers did not start; launcher output:\n{out}")

    def finish(self, timeout: float = 60) -> tuple:
        out, _ = self.proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert lines, out
        return self.proc.returncode, json.loads(lines[-1][7:]), out


def _kill_leftovers(nodes: List["Node"]) -> None:
    """Never leave stand-in processes behind, even when a test fails half-way."""
    for node in nodes:
        pids = [node.proc.pid] if node.proc.poll() is None else []
        for f in [*node.control.glob("trainer.*.pid"), node.control.parent / "fake_launcher.pid"]:
            try:
                pids.append(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        for pid in pids:
            try:
                if "fakes" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        if node.proc.poll() is None:
            node.proc.wait(timeout=10)


@pytest.fixture
def fakes(tmp_path: Path):
    d = tmp_path / "fakes"
    d.mkdir()
    (d / "trainer.py").write_text(FAKE_TRAINER)
    (d / "launcher.py").write_text(FAKE_LAUNCHER)
    (d / "driver.py").write_text(DRIVER)
    bindir = d / "bin"
    bindir.mkdir()
    log = d / "scontrol.log"
    (bindir / "squeue").write_text('#!/bin/sh\necho "${FAKE_SQUEUE_LEFT:-UNLIMITED}"\n')
    (bindir / "scontrol").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\nif [ -n "$FAKE_SCONTROL_FAIL" ]; then echo "$FAKE_SCONTROL_FAIL" >&2; exit 1; fi\n'
        'if [ "$1" = show ] && [ -n "$FAKE_PREEMPT_TIME" ]; then '
        'echo "JobId=4242 JobState=RUNNING PreemptTime=$FAKE_PREEMPT_TIME EndTime=2026-01-01T00:00:10"; exit 0; fi\n'
        'if [ "$1" = show ]; then exit 1; fi\nexit 0\n')
    (bindir / "scancel").write_text(f'#!/bin/sh\necho scancel "$@" >> {log}\n')  # never the real one
    for f in bindir.iterdir():
        f.chmod(0o755)
    nodes: List[Node] = []
    yield {"dir": d, "bin": bindir, "scontrol_log": log, "nodes": nodes}
    _kill_leftovers(nodes)


def start_node(fakes: Dict[str, Path], run: RunDir, env: Dict[str, str], *, mode: str = "stop", nproc: int = 2,
               rank0: int = 0, local: Optional[bool] = None, grace: Optional[float] = None, call: bool = False,
               submitit_like: bool = False, node: int = 0, slow_prep: bool = False,
               start_timeout: Optional[float] = None, preflight: bool = False) -> Node:
    argv = [PY, str(fakes["dir"] / "launcher.py"), str(fakes["dir"] / "trainer.py"), mode, str(nproc), str(rank0)]
    cfg = {"run_dir": str(run.root), "argv": argv, "local": local, "grace": grace, "call": call, "kill_after": 2,
           "submitit_like": submitit_like, "slow_prep": slow_prep, "start_timeout": start_timeout,
           "preflight": preflight}
    full_env = {"PATH": f"{fakes['bin']}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "PYTHONPATH": str(REPO), "HOME": os.environ.get("HOME", "/tmp"), **env}
    proc = subprocess.Popen([PY, str(fakes["dir"] / "driver.py"), json.dumps(cfg)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = env.get("ERNIE_CLUSTER_LOCAL_JOB_ID") or env.get("SLURM_JOB_ID")
    restart = int(env.get("ERNIE_CLUSTER_LOCAL_RESTART") or env.get("SLURM_RESTART_COUNT") or 0)
    started = Node(proc, run.attempt_log_dir(job, restart, node) / "control")
    fakes["nodes"].append(started)
    return started


def local_env(job: str = "local1", restart: int = 0) -> Dict[str, str]:
    return {"ERNIE_CLUSTER_LOCAL_JOB_ID": job, "ERNIE_CLUSTER_LOCAL_RESTART": str(restart)}


def exits(control: Path) -> Dict[int, dict]:
    return {int(p.name.split(".")[1]): json.loads(p.read_text()) for p in control.glob("exit.*.json")}


def test_usr2_reaches_setsid_trainers_and_attempt_is_stopped(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, cluster={"backend": "local"})
    node = start_node(fakes, run, local_env())
    pids = node.wait_trainers(2)
    assert all(os.getsid(p) == p for p in pids)  # trainers lead their own sessions, like paddle's
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 75 and result["reason"] == "stopped" and result["cause"] == "signal", out
    assert {r["reason"] for r in exits(node.control).values()} == {"stopped"}
    assert {r["signal"] for r in exits(node.control).values()} == {"SIGUSR2"}
    assert "USR2 ignored: True" in (node.control.parent / "launcher_signals.txt").read_text()
    assert "node_rank=0 num_nodes=1" in out and "argv: " in out and "restart=0" in out
    (record,) = run.read_attempts()
    assert record["reason"] == "stopped" and record["job_id"] == "local1" and record["signal"] == "SIGUSR2"
    assert record["backend"] == "local" and isinstance(record["step"], int)
    assert (node.control.parent / "launcher.log").exists() and (node.control.parent / "node_result.json").exists()
    assert not run.train_lock.read_text() == ""  # who held it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_other_stop_signals_are_forwarded_as_usr2(tmp_path: Path, fakes, sig) -> None:
    run = make_run(tmp_path, cluster={"backend": "local"})
    node = start_node(fakes, run, local_env())
    node.wait_trainers(2)
    node.proc.send_signal(sig)
    code, result, out = node.finish()
    assert code == 75 and result["reason"] == "stopped", out
    assert {r["signal"] for r in exits(node.control).values()} == {"SIGUSR2"}


def test_completed_and_failed_attempts(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, cluster={"backend": "local", "requeue": {"max_failure_requeues": 0}})
    code, result, out = start_node(fakes, run, local_env("localA"), mode="complete").finish()
    assert code == 0 and result["reason"] == "completed" and result["step"] == 5, out
    code, result, out = start_node(fakes, run, local_env("localA", 1), mode="nan").finish()
    assert code == 1 and result["reason"] == "failed" and "loss is NaN" in result["message"], out
    code, result, out = start_node(fakes, run, local_env("localA", 2), mode="crash").finish()
    assert code == 1 and result["reason"] == "failed" and "without an exit record" in result["message"], out
    assert [a["reason"] for a in run.read_attempts()] == ["completed", "failed", "failed"]
    # one log directory per attempt: nothing overwritten
    assert sorted(p.name for p in run.logs.iterdir()) == ["attempt-localA-0", "attempt-localA-1", "attempt-localA-2"]


def test_a_rendezvous_that_hangs_is_stopped_by_the_start_watchdog(tmp_path: Path, fakes) -> None:
    # The trainers started (pid files) but never got past their first collective: not waited out.
    run = make_run(tmp_path, cluster={"backend": "local", "requeue": {"max_failure_requeues": 0}})
    node = start_node(fakes, run, local_env(), mode="hang", start_timeout=2.0)
    node.wait_trainers(2)
    code, result, out = node.finish(timeout=30)
    assert code == 1 and result["reason"] == "failed", out
    assert "not all past their first collective within 2s" in out
    assert (result["cause"], result["signal"]) == ("hung", None), out  # the launcher's own TERM is no signal


def test_escalation_when_trainers_ignore_the_stop(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, cluster={"backend": "local", "requeue": {"max_failure_requeues": 0}})
    node = start_node(fakes, run, local_env(), mode="ignore", grace=1.0)
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 1 and result["reason"] == "failed", out  # no exit records: never a clean stop
    assert "SIGTERM to the paddle launcher" in out and "SIGKILL" in out
    assert all(not pid_alive(pid) for pid in (int(p.read_text()) for p in node.control.glob("trainer.*.pid")))


def test_stop_signal_during_data_preparation_requeues_at_once(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path)
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="2:00:00"), slow_prep=True)
    deadline = time.time() + 20
    while not list(run.data_cache.glob("PREPARING.*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(run.data_cache.glob("PREPARING.*")), "node 0 never started preparing"
    t0 = time.time()
    node.proc.send_signal(signal.SIGUSR1)
    code, result, out = node.finish()
    assert time.time() - t0 < 10, out
    assert code == 75 and result["reason"] == "stopped" and result["action"] == "requeue", out
    assert "tokenizing stopped" in result["message"] and "requeue 4242" in fakes["scontrol_log"].read_text()
    assert not list(node.control.glob("trainer.*.pid"))  # training never started


def test_warning_before_the_launcher_started_stops_before_training(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path)
    code, result, out = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="2:00:00",
                                                               ERNIE_CLUSTER_STOP_REQUESTED="USR2:4242:0")).finish()
    assert code == 75 and result["reason"] == "stopped" and result["action"] == "requeue", out
    assert result["signal"] == "SIGUSR2" and "before training started" in result["message"], out
    assert not list(run.logs.rglob("trainer.*.pid"))
    # a value inherited from elsewhere (another job, an earlier attempt) stops nothing
    node = start_node(fakes, run, _slurm_node_env(SLURM_RESTART_COUNT="1", ERNIE_CLUSTER_STOP_REQUESTED="USR2:4242:0"),
                      mode="complete")
    code, result, out = node.finish()
    assert code == 0 and result["reason"] == "completed" and "is not for attempt 4242-1; ignored" in out, out


def _slurm_node_env(n: int = 1, rank: int = 0, nodelist: str = "localhost", **extra) -> Dict[str, str]:
    return slurm_env(n, rank, nodelist, **extra)


@pytest.mark.parametrize("left, preempt_time, cause", [("1:30", "", "timeout"), ("2:00:00", "", "preempted"),
                                                       ("0:10", "2026-01-01T00:00:00", "preempted")])
def test_slurm_stop_requeues_and_tells_timeout_from_preemption(tmp_path: Path, fakes, left: str, preempt_time: str,
                                                               cause: str) -> None:
    # Slurm moves a preempted job's end to now + GraceTime: little time is left, but PreemptTime says why.
    run = make_run(tmp_path)
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT=left, FAKE_PREEMPT_TIME=preempt_time))
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 75 and result["reason"] == "stopped" and result["cause"] == cause, out
    assert result["action"] == "requeue"
    assert "requeue 4242" in fakes["scontrol_log"].read_text()
    (record,) = run.read_attempts()
    assert record["cause"] == cause and record["action"] == "requeue" and record["remaining_s"] is not None


def test_slurm_requeue_policy_caps(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, cluster={"backend": "slurm", "time": "01:00:00",
                                      "requeue": {"signal_lead_s": 30, "max_requeues": 5, "max_timeout_requeues": 1}})
    run.record_attempt({"job_id": "4242", "restart": 0, "reason": "stopped", "cause": "timeout", "action": "requeue"})
    node = start_node(fakes, run, _slurm_node_env(SLURM_RESTART_COUNT="1", FAKE_SQUEUE_LEFT="0:50"))
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 5 and result["action"] == "requeue-denied" and "max_timeout_requeues=1" in result["message"], out
    assert not fakes["scontrol_log"].exists() or "requeue" not in fakes["scontrol_log"].read_text()
    # restart count at max_requeues: denied too
    node = start_node(fakes, run, _slurm_node_env(SLURM_RESTART_COUNT="5", FAKE_SQUEUE_LEFT="3:00:00"))
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 5 and "max_requeues=5" in result["message"], out
    assert [a.get("action") for a in run.read_attempts()] == ["requeue", "requeue-denied", "requeue-denied"]


def test_slurm_scontrol_failure_is_logged_not_fatal(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path)
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="3:00:00",
                                                  FAKE_SCONTROL_FAIL="Requested operation is presently disabled"))
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 75 and result["action"] == "requeue-failed" and "presently disabled" in result["message"], out
    # the record was written before the requeue was tried, then replaced: one attempt, with the final word
    assert run.attempts.read_text().count('"job_id"') == 2
    (record,) = run.read_attempts()
    assert record["action"] == "requeue-failed" and "presently disabled" in record["message"]


def test_slurm_transient_failure_is_requeued_when_allowed(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, cluster={"backend": "slurm", "time": "01:00:00",
                                      "requeue": {"signal_lead_s": 30, "max_failure_requeues": 1}})
    code, result, out = start_node(fakes, run, _slurm_node_env(), mode="crash").finish()  # rank 1 dies, no record
    assert code == 75 and result["reason"] == "failed" and result["action"] == "requeue", out
    assert result["cause"] == "trainer-died" and "requeue 4242" in fakes["scontrol_log"].read_text()
    (record,) = run.read_attempts()
    assert (record["cause"], record["ranks"], record["action"]) == ("trainer-died", [1], "requeue")
    # the cap is spent: the next failure of the same job ends it
    code, result, out = start_node(fakes, run, _slurm_node_env(SLURM_RESTART_COUNT="1"), mode="crash").finish()
    assert code == 1 and result["action"] == "none" and "max_failure_requeues=1" in result["message"], out
    # a non-finite loss is never retried, whatever the cap
    (tmp_path / "nan").mkdir()
    run2 = make_run(tmp_path / "nan", cluster={"backend": "slurm", "time": "01:00:00",
                                               "requeue": {"signal_lead_s": 30, "max_failure_requeues": 3}})
    code, result, out = start_node(fakes, run2, _slurm_node_env(SLURM_JOB_ID="4343"), mode="nan").finish()
    assert code == 1 and result["action"] == "none", out


def test_slurm_failed_attempt_is_never_requeued(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path)
    code, result, out = start_node(fakes, run, _slurm_node_env(), mode="nan").finish()
    assert code == 1 and result["reason"] == "failed" and result["action"] == "none", out
    assert not fakes["scontrol_log"].exists() or "requeue" not in fakes["scontrol_log"].read_text()


def test_submitit_style_call(tmp_path: Path, fakes) -> None:
    """submitit installs its own USR2/TERM handlers first; ours replace them. A requeue must end in SystemExit."""
    run = make_run(tmp_path)
    node = start_node(fakes, run, _slurm_node_env(FAKE_SQUEUE_LEFT="3:00:00"), call=True, submitit_like=True)
    node.wait_trainers(2)
    node.proc.send_signal(signal.SIGUSR2)
    code, result, out = node.finish()
    assert code == 75 and result == {"system_exit": 75}, out
    assert "submitit's handler ran" not in out
    code, result, out = start_node(fakes, run, _slurm_node_env(SLURM_RESTART_COUNT="1"), mode="nan", call=True).finish()
    assert code == 99 and result["raised"] == "AttemptFailed" and "loss is NaN" in result["message"], out
    code, result, out = start_node(fakes, run, _slurm_node_env(SLURM_RESTART_COUNT="2"), mode="complete", call=True).finish()
    assert code == 0 and result["reason"] == "completed", out


def test_node_launcher_pickles() -> None:
    launcher = NodeLauncher("/some/run")
    clone = pickle.loads(pickle.dumps(launcher))
    assert clone.run_dir == "/some/run" and clone.local is None


def test_two_nodes_stop_together(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, resources={"nodes": 2, "gpus_per_node": 0, "procs_per_node": 2})
    nodelist = "localhost,127.0.0.1"
    n1 = start_node(fakes, run, slurm_env(2, 1, nodelist, FAKE_SQUEUE_LEFT="3:00:00"), rank0=2, node=1)
    n0 = start_node(fakes, run, slurm_env(2, 0, nodelist, FAKE_SQUEUE_LEFT="3:00:00"), rank0=0, node=0)
    n0.wait_trainers(2)
    n1.wait_trainers(2)  # node 1 waited for node 0's READY marker first
    for n in (n1, n0):
        n.proc.send_signal(signal.SIGUSR2)
    c1, r1, o1 = n1.finish()
    c0, r0, o0 = n0.finish()
    assert c1 == 75 and r1["reason"] == "stopped" and r1["action"] == "requeue", o1  # node 0's verdict
    assert c0 == 75 and r0["reason"] == "stopped" and r0["action"] == "requeue", o0
    assert "num_nodes=2" in o0 and "num_nodes=2" in o1 and "--nnodes 2" in o0 and "--rank 1" in o1
    (record,) = run.read_attempts()  # only node 0 records
    assert record["nodes"] == 2 and record["reason"] == "stopped"
    assert fakes["scontrol_log"].read_text().count("requeue 4242") == 1


def test_two_nodes_share_node0_verdict_when_requeue_is_denied(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, resources={"nodes": 2, "gpus_per_node": 0, "procs_per_node": 1},
                   cluster={"backend": "slurm", "time": "01:00:00", "requeue": {"signal_lead_s": 30, "max_requeues": 0}})
    nodelist = "localhost,127.0.0.1"
    n1 = start_node(fakes, run, slurm_env(2, 1, nodelist, FAKE_SQUEUE_LEFT="0:40"), nproc=1, rank0=1, node=1)
    n0 = start_node(fakes, run, slurm_env(2, 0, nodelist, FAKE_SQUEUE_LEFT="0:40"), nproc=1, rank0=0, node=0)
    n0.wait_trainers(1)
    n1.wait_trainers(1)
    for n in (n0, n1):
        n.proc.send_signal(signal.SIGUSR2)
    (c0, r0, o0), (c1, r1, o1) = n0.finish(), n1.finish()
    assert (c0, r0["action"], r0["cause"]) == (5, "requeue-denied", "timeout"), o0
    assert (c1, r1["action"]) == (5, "requeue-denied"), o1  # srun reports the highest task status: 5, not 75
    assert "requeue" not in (fakes["scontrol_log"].read_text() if fakes["scontrol_log"].exists() else "")


def test_lock_held_by_a_live_run_touches_nothing(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path, cluster={"backend": "local"})
    with open(run.train_lock, "w") as holder:
        holder.write('{"job_id": "999", "host": "elsewhere", "pid": 1}\n')
        holder.flush()
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, result, out = start_node(fakes, run, local_env()).finish()
    assert code == 3 and result["reason"] == "failed", out
    assert "elsewhere" in result["message"] and "999" in result["message"]
    assert not run.logs.exists() and not run.attempts.exists() and not run.data_cache.exists()
    assert "elsewhere" in run.train_lock.read_text()  # the holder's details were not overwritten


def test_bad_environment_exit_code(tmp_path: Path, fakes) -> None:
    run = make_run(tmp_path)  # backend slurm, but no Slurm variables
    code, result, out = start_node(fakes, run, {}).finish()
    assert code == 2 and "SLURM_JOB_ID" in result["message"], out
    assert not run.logs.exists()


def test_launch_cli_help_and_import_is_light() -> None:
    out = subprocess.run([PY, "-c", "import sys, ernie_cluster.launch, ernie_cluster.launch.node, "
                          "ernie_cluster.launch.prepare; print(sorted(m for m in ('paddle', 'paddlenlp', 'numpy') "
                          "if m in sys.modules))"], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
    out = subprocess.run([PY, "-m", "ernie_cluster.launch", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "--run-dir" in out.stdout
