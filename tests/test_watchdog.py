"""The hang watchdog (ernie_cluster.launch.watchdog) against real trainer stand-ins: child Python processes
that import ernie_cluster.train.heartbeat and beat in a loop, as the trainer does, and are SIGSTOPped,
slowed down or held in a long checkpoint phase. Plus the pure decisions on made-up beats.

Limits are scaled down to seconds here; the decisions are the same at the defaults' minutes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from ernie_cluster.launch.watchdog import (SUMMARY, Beat, Limits, Watchdog, assess, dump_stacks, find_stragglers,
                                           process_state, read_heartbeats, read_summary)
from ernie_cluster.train.heartbeat import DUMP_SIGNAL, Heartbeat, heartbeat_dir, install_stack_dump, stack_file

REPO = Path(__file__).resolve().parent.parent

# A trainer stand-in: the same calls the trainer makes, around a sleep for the step.
CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from ernie_cluster.train.heartbeat import Heartbeat, install_stack_dump, stack_file

cfg = json.loads(sys.argv[1])
install_stack_dump(stack_file(cfg["log_dir"], cfg["rank"]))
hb = Heartbeat(cfg["beat_dir"], cfg["rank"], min_interval_s=cfg["interval"])


def long_checkpoint(seconds):
    with hb.during("checkpoint"):
        time.sleep(seconds)


def train_loop_function():
    step = 0
    while True:
        t0 = time.perf_counter()
        time.sleep(cfg["step_s"])
        step += 1
        hb.step(step, time.perf_counter() - t0)
        if step == cfg.get("checkpoint_at"):
            long_checkpoint(cfg["checkpoint_s"])


hb.phase("train")
train_loop_function()
"""


@pytest.fixture
def trainers(tmp_path: Path):
    """spawn(rank, step_s, **extra) -> Popen of a beating stand-in; all killed at the end."""
    script = tmp_path / "stand_in.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    beat_dir, log_dir = heartbeat_dir(tmp_path / "control"), tmp_path
    procs: List[subprocess.Popen] = []

    def spawn(rank: int, step_s: float, **extra) -> subprocess.Popen:
        cfg = dict(beat_dir=str(beat_dir), log_dir=str(log_dir), rank=rank, step_s=step_s, interval=0.1, **extra)
        proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)])
        procs.append(proc)
        return proc

    spawn.beat_dir, spawn.log_dir = beat_dir, log_dir  # type: ignore[attr-defined]
    yield spawn
    for proc in procs:  # only the processes this test started, by pid
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=10)


def wait_for(predicate: Callable[[], object], timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s")


def measured(beat_dir: Path, ranks: List[int], samples: int = 5) -> Dict[int, Beat]:
    """The beats once every rank has `samples` step times (the learned limit and the skew need them)."""
    def ready():
        beats = read_heartbeats(beat_dir)
        return beats if all(r in beats and len(beats[r].step_times) >= samples for r in ranks) else None
    return wait_for(ready, 15.0)


def beat(rank: int, phase: str = "train", time_: float = 1000.0, step_times=(0.5,) * 10, busy_times=(),
         step=100) -> Beat:
    return Beat(rank=rank, pid=10 + rank, host="h", phase=phase, step=step, time=time_, phase_started=time_,
                step_times=tuple(step_times), busy_times=tuple(busy_times))


# ---------------------------------------------------------------- real processes


def test_a_sigstopped_rank_is_hung_within_its_limit_and_its_stacks_are_recorded(trainers):
    limits = Limits(step_s_min=2.0, step_factor=20.0)  # 20 x ~0.02 s is less: the 2 s floor applies
    procs = {0: trainers(0, 0.02), 1: trainers(1, 0.02)}
    measured(trainers.beat_dir, [0, 1])
    os.kill(procs[1].pid, signal.SIGSTOP)
    stopped_at = time.time()
    assert wait_for(lambda: process_state(procs[1].pid) == "T", 5.0)

    verdict = wait_for(lambda: assess(read_heartbeats(trainers.beat_dir), time.time(), limits).hung or None, 10.0)
    detected_after = time.time() - stopped_at
    assert [h.rank for h in verdict] == [1]  # rank 0 kept beating
    hung = verdict[0]
    assert hung.phase == "train" and hung.limit_s == 2.0 and "floor" in hung.why and hung.pid == procs[1].pid
    # within its limit (not at any time limit): no sooner than the limit less the last beat's age, soon after it
    assert 2.0 - 0.5 <= detected_after <= 2.0 + 3.0

    lines: List[str] = []
    dog = Watchdog([trainers.beat_dir], trainers.log_dir, limits, log=lines.append, check_every_s=0.0)
    dog.watch_since = 0.0  # as if it had watched from the start
    pids = {r: p.pid for r, p in procs.items()}
    fired = dog.check(pids)
    assert fired is not None and fired.hung_ranks == [1] and fired.hung[0].state == "T" and fired.suspects == [1]
    assert any("ERROR: hung: rank 1" in line for line in lines), lines
    text = stack_file(trainers.log_dir, 1).read_text()
    assert "train_loop_function" in text and "most recent call first" in text, text
    assert "train_loop_function" in stack_file(trainers.log_dir, 0).read_text()  # every trainer of the node
    assert dog.check(pids) is None  # fires once; the supervisor is ending the attempt
    assert read_summary(trainers.log_dir)["hung"][0]["rank"] == 1


def test_a_slowed_rank_is_a_straggler_and_normal_ranks_are_not(trainers):
    pids = {rank: trainers(rank, step_s).pid for rank, step_s in ((0, 0.01), (1, 0.01), (2, 0.25))}
    beats = measured(trainers.beat_dir, [0, 1, 2])
    verdict = assess(beats, time.time(), Limits(step_s_min=30.0))
    assert verdict.hung == ()
    assert [s.rank for s in verdict.stragglers] == [2]
    assert verdict.stragglers[0].skew > 3.0 and verdict.stragglers[0].fastest_rank in (0, 1)
    assert find_stragglers({r: b for r, b in beats.items() if r != 2}) == ()  # a normal run: none

    lines: List[str] = []
    dog = Watchdog([trainers.beat_dir], trainers.log_dir, Limits(step_s_min=30.0), log=lines.append,
                   check_every_s=0.0)
    assert dog.check(pids) is None
    assert any(line.startswith("WARNING: straggler rank 2") for line in lines), lines
    assert [s["rank"] for s in json.loads((trainers.log_dir / SUMMARY).read_text())["stragglers"]] == [2]


def test_a_long_checkpoint_within_its_limit_is_not_hung(trainers):
    trainers(0, 0.02, checkpoint_at=8, checkpoint_s=2.5)
    in_checkpoint = wait_for(lambda: (read_heartbeats(trainers.beat_dir).get(0) or beat(0)).phase == "checkpoint", 10.0)
    assert in_checkpoint
    generous, strict = Limits(step_s_min=0.5, checkpoint_s=10.0), Limits(step_s_min=0.5, checkpoint_s=1.0)
    time.sleep(1.3)  # silent longer than the training limit, and longer than the strict checkpoint limit
    beats = read_heartbeats(trainers.beat_dir)
    assert beats[0].phase == "checkpoint" and time.time() - beats[0].time > 1.0
    assert assess(beats, time.time(), generous).hung == ()
    hung = assess(beats, time.time(), strict).hung
    assert [(h.rank, h.phase, h.limit_s) for h in hung] == [(0, "checkpoint", 1.0)]
    after = wait_for(lambda: (lambda b: b if b.phase == "train" and (b.step or 0) > 8 else None)(
        read_heartbeats(trainers.beat_dir)[0]), 10.0)
    assert after.step_times  # back to training, the window kept


def test_dump_stacks_of_a_gone_process_reports_nothing(tmp_path: Path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert dump_stacks({3: gone.pid}, tmp_path, settle_s=0.2) == {}


# ---------------------------------------------------------------- cost


def test_a_beat_costs_well_under_a_millisecond_amortised(tmp_path: Path):
    hb = Heartbeat(tmp_path, 0)  # 1 s rate limit, as in training
    hb.phase("train")
    t0 = time.perf_counter()
    n = 20000
    for step in range(n):
        hb.step(step, 0.1, 0.01)
    per_step = (time.perf_counter() - t0) / n
    assert hb.writes <= 2 + (time.perf_counter() - t0) + 1  # about one write a second
    writes = Heartbeat(tmp_path, 1, min_interval_s=0.0)  # every beat written, full window
    for step in range(60):
        writes.step(step, 0.123456, 0.0123)
    t1 = time.perf_counter()
    for step in range(200):
        writes.step(step, 0.123456, 0.0123)
    per_write = (time.perf_counter() - t1) / 200
    print(f"heartbeat: {per_step * 1e6:.1f} us per step (rate-limited), {per_write * 1e6:.0f} us per write")
    # generous bounds for a loaded 2-core machine; expected: a few us per step, ~100 us per write
    assert per_step < 1e-3 and per_write < 20e-3 and hb.cost < 1e-3
    assert json.loads(writes.path.read_text())["step"] == 199


def test_a_disabled_heartbeat_does_nothing(tmp_path: Path):
    hb = Heartbeat(None, 0)
    hb.phase("data")
    hb.step(1, 0.5)
    with hb.during("checkpoint"):
        pass
    assert not hb.enabled and hb.writes == 0 and list(tmp_path.iterdir()) == []


def test_the_stack_dump_signal_is_harmless_by_default_and_writes_the_stacks(tmp_path: Path):
    assert signal.getsignal(DUMP_SIGNAL) == signal.SIG_DFL  # default action: ignore (SIGURG)
    code = ("import os, signal, time; os.kill(os.getpid(), signal.SIGURG); time.sleep(0.1); print('alive')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "alive\n"
    code = (f"import os, sys, time; sys.path.insert(0, {str(REPO)!r})\n"
            "from ernie_cluster.train.heartbeat import install_stack_dump, DUMP_SIGNAL\n"
            f"install_stack_dump({str(tmp_path / 'stacks.txt')!r})\n"
            "def some_function():\n    os.kill(os.getpid(), DUMP_SIGNAL); time.sleep(0.1)\n"
            "some_function(); print('alive')\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "alive\n"
    assert "in some_function" in (tmp_path / "stacks.txt").read_text()
    with open(tmp_path / "own.txt", "w") as f:  # an open file works as well
        assert install_stack_dump(f) is f


# ---------------------------------------------------------------- pure decisions


def test_the_training_limit_is_learned_from_the_median_step_time():
    limits = Limits(step_s_min=300.0, step_factor=20.0, warmup_s=900.0, min_step_samples=5)
    slow = beat(0, step_times=(29.0, 30.0, 31.0, 30.0, 30.0, 500.0))  # one outlier does not move the median
    assert limits.for_beat(slow) == (600.0, "20 x median step 30s")
    assert assess({0: slow}, 1000.0 + 590.0, limits).hung == ()
    assert [h.limit_s for h in assess({0: slow}, 1000.0 + 610.0, limits).hung] == [600.0]
    fast = beat(0, step_times=(0.5,) * 10)
    assert limits.for_beat(fast)[0] == 300.0 and "floor" in limits.for_beat(fast)[1]
    young = beat(0, step_times=(30.0,) * 4)  # too few steps to learn from: the warm-up limit
    assert limits.for_beat(young)[0] == 900.0
    assert limits.for_beat(beat(0, phase="checkpoint")) == (1800.0, "checkpoint limit")
    assert limits.for_beat(beat(0, phase="data"))[0] == 3600.0
    assert limits.for_beat(beat(0, phase="something-new"))[0] == 3600.0  # unknown: the most generous


def test_ranks_held_by_a_peer_in_a_long_phase_wait_and_the_whole_job_can_hang():
    limits = Limits()
    beats = {0: beat(0, phase="checkpoint", time_=1000.0), 1: beat(1, time_=1000.0)}
    waiting = assess(beats, 1000.0 + 400.0, limits)  # rank 1: silent 400 s > 300 s, rank 0 checkpoints
    assert waiting.hung == () and waiting.waiting == (1,) and not waiting.all_silent
    job = assess(beats, 1000.0 + 1900.0, limits)  # the checkpoint itself is past its limit now
    assert job.hung_ranks == [0, 1] and job.all_silent and "whole job" in job.describe()
    assert job.suspects == [0, 1]  # same step, no process state: either
    stopped = assess(beats, 1000.0 + 400.0, limits, states={1: "T"})  # SIGSTOPped: never merely waiting
    assert stopped.hung_ranks == [1] and stopped.waiting == () and stopped.suspects == [1]
    one = assess({0: beat(0, time_=1000.0, step=99), 1: beat(1, time_=1000.0)}, 1400.0, limits)
    assert one.all_silent and one.suspects == [0]  # the one a step behind blocked the other


def test_missing_ranks_done_ranks_and_the_watch_start():
    limits = Limits(startup_s=100.0)
    verdict = assess({0: beat(0, phase="done", time_=0.0)}, 1000.0, limits, expected=[0, 1], watch_since=950.0)
    assert verdict.hung == () and verdict.watched == 1  # rank 0 finished; rank 1 silent 50 s of 100
    verdict = assess({}, 1000.0, limits, expected=[1], watch_since=850.0)
    assert [(h.rank, h.phase, h.limit_s) for h in verdict.hung] == [(1, "launch", 100.0)]
    # silence before the watch started (or before a suspension of the watchdog itself) does not count
    assert assess({0: beat(0, time_=0.0)}, 1000.0, Limits(step_s_min=300.0), watch_since=900.0).hung == ()


def test_tiny_cpu_steps_jitter_without_stragglers():
    beats = {0: beat(0, busy_times=(0.001,) * 10), 1: beat(1, busy_times=(0.004,) * 10)}  # 4x, but 3 ms
    assert find_stragglers(beats) == ()
    beats[1] = beat(1, busy_times=(0.2,) * 10)
    (s,) = find_stragglers(beats)
    assert (s.rank, s.fastest_rank, round(s.skew)) == (1, 0, 200)
    assert find_stragglers({0: beats[0], 1: beat(1, busy_times=(0.2,) * 3)}) == ()  # too few samples
    assert find_stragglers({0: beats[0], 1: beat(1, phase="evaluation", busy_times=(0.2,) * 10)}) == ()


def test_read_heartbeats_skips_what_is_not_a_beat(tmp_path: Path):
    hb = Heartbeat(tmp_path / "a", 4)
    hb.step(7, 0.5)
    (tmp_path / "a" / "rank5.json").write_text('{"rank": 5, "pid"')  # cut short
    (tmp_path / "a" / ".rank6.json.tmp").write_text("{}")
    other = Heartbeat(tmp_path / "b", 9)  # another node's directory
    beats = read_heartbeats(tmp_path / "a", tmp_path / "b", tmp_path / "missing")
    assert sorted(beats) == [4, 9] and beats[4].step == 7 and beats[4].phase == "train"
    assert beats[9].phase == "start-up" and beats[9].pid == other.pid == os.getpid()


def test_the_watchdog_does_not_count_its_own_suspension(tmp_path: Path):
    clock = {"wall": 0.0, "mono": 0.0}
    Heartbeat(tmp_path, 0)  # a beat at the real time: the fake wall clock starts there
    clock["wall"] = json.loads((tmp_path / "rank0.json").read_text())["time"]
    lines: List[str] = []
    dog = Watchdog([tmp_path], tmp_path, Limits(startup_s=100.0), log=lines.append, settle_s=0.2,
                   clock=lambda: clock["wall"], monotonic=lambda: clock["mono"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands for the trainer
    try:
        pids = {0: sleeper.pid}
        assert dog.check(pids) is None
        clock["wall"] += 3600.0
        clock["mono"] += 3600.0  # Slurm suspended the job (launcher and trainers) for an hour
        assert dog.check(pids) is None
        assert any("suspended" in line for line in lines), lines
        verdicts = []
        for _ in range(6):  # then still nothing from the trainer, checked every 20 s, past its limit at last
            clock["wall"] += 20.0
            clock["mono"] += 20.0
            verdicts.append(dog.check(pids))
        assert verdicts[:5] == [None] * 5
        fired = verdicts[5]
        assert fired is not None and fired.hung_ranks == [0] and fired.hung[0].phase == "start-up"
        assert fired.hung[0].state in ("R", "S")
        assert any("rank 0 stacks not written" in line for line in lines), lines  # it installed no handler
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_watchdog_reads_every_node_and_acts_on_its_own_ranks(tmp_path: Path):
    local, remote = heartbeat_dir(tmp_path / "node0" / "control"), heartbeat_dir(tmp_path / "node1" / "control")
    for rank in (0, 1):
        Heartbeat(local, rank).step(5, 0.5)  # training, one step measured: the warm-up limit applies
    Heartbeat(remote, 2).phase("checkpoint")  # another node's rank, writing its checkpoint shard
    start = time.time()
    clock = {"now": start}
    limits = Limits(warmup_s=10.0, checkpoint_s=100.0)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # rank 0; rank 1 exited
    try:
        pids = {0: sleeper.pid}
        lines: List[str] = []
        common = dict(log=lines.append, check_every_s=0.0, settle_s=0.2, suspend_gap_s=1e6, clock=lambda: clock["now"])
        dog = Watchdog([local, remote], tmp_path / "node0", limits, peer_grace_s=0.0, **common)
        quiet = Watchdog([local, remote], tmp_path / "node0", limits, stop_hung=False, **common)
        clock["now"] = start + 50.0  # rank 0 past its 10 s, but held by rank 2's checkpoint (100 s)
        assert dog.check(pids) is None and quiet.check(pids) is None
        assert read_summary(tmp_path / "node0")["waiting"] == [0]
        clock["now"] = start + 150.0  # the checkpoint is past its limit too: the whole job is stuck
        assert quiet.check(pids) is None and quiet.check(pids) is None
        assert sum("WARNING: hung, not stopped" in line for line in lines) == 1
        fired = dog.check(pids)
        assert fired is not None and fired.hung_ranks == [0, 2] and fired.all_silent  # rank 1 is gone, not hung
        assert fired.last_step == 5 and fired.hung[1].phase == "checkpoint" and fired.hung[1].state == ""
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_node_whose_ranks_only_wait_gives_the_hung_peer_node_time_to_act(tmp_path: Path):
    """Rank 1 (another node) stopped, rank 0 here blocked in a collective: both are silent, but this node waits
    `peer_grace_s` for the other node to act on its stopped rank; a stopped rank here is acted on at once."""
    local, remote = heartbeat_dir(tmp_path / "node0" / "control"), heartbeat_dir(tmp_path / "node1" / "control")
    Heartbeat(local, 0).phase("train")
    Heartbeat(remote, 1).phase("train")
    start = time.time()
    clock = {"now": start}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lines: List[str] = []
        dog = Watchdog([local], tmp_path / "node0", Limits(warmup_s=10.0), log=lines.append, check_every_s=0.0,
                       settle_s=0.2, suspend_gap_s=1e6, peer_grace_s=30.0, clock=lambda: clock["now"],
                       monotonic=lambda: clock["now"], peers=lambda: [remote])
        clock["now"] = start + 20.0
        assert dog.check({0: sleeper.pid}) is None  # both past 10 s; rank 0 sleeps (S): wait for node1
        assert any("giving their nodes 30s to act first" in line for line in lines), lines
        clock["now"] = start + 45.0
        assert dog.check({0: sleeper.pid}) is None
        clock["now"] = start + 51.0  # node1 did nothing in 30 s (its launcher may be gone): act here
        fired = dog.check({0: sleeper.pid})
        assert fired is not None and fired.hung_ranks == [0, 1]

        os.kill(sleeper.pid, signal.SIGSTOP)  # now the stopped rank is this node's: no waiting
        time.sleep(0.2)
        fresh = Watchdog([local], tmp_path / "node0", Limits(warmup_s=10.0), log=lines.append, check_every_s=0.0,
                         settle_s=0.2, suspend_gap_s=1e6, peer_grace_s=30.0, clock=lambda: clock["now"],
                         monotonic=lambda: clock["now"], peers=lambda: [remote])
        fresh.watch_since = start
        fired = fresh.check({0: sleeper.pid})
        assert fired is not None and fired.suspects == [0]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_spec_section_holds_the_watchdog_defaults_and_refuses_what_cannot_work():
    from pydantic import ValidationError

    from ernie_cluster.spec.sections import WatchdogSection

    # one set of defaults: the spec's cluster.watchdog and the watchdog's own Limits agree
    assert Limits.from_mapping(WatchdogSection().model_dump()) == Limits()
    assert WatchdogSection().enabled is True
    short = Limits.from_mapping(WatchdogSection(step_s_min=10, warmup_s=20).model_dump())
    assert (short.step_s_min, short.warmup_s, short.checkpoint_s) == (10.0, 20.0, 1800.0)
    for bad in ({"step_factor": 1.5}, {"straggler_skew": 1.0}, {"startup_s": 0}, {"step_s_min": -1},
                {"straggler_floor_s": 0}, {"data_s": "soon"}, {"unknown_s": 5}):
        with pytest.raises(ValidationError):
            WatchdogSection(**bad)
