"""The real trainer's side of hang detection: a tiny CPU run (one `python -m ernie_cluster.train` process with a
control directory, as the node launcher starts it) beats once per step and per phase, leaves phase `done` at the
end, dumps its Python stacks on the watchdog's signal without harm to the run, and the slow-rank test hook shows up
in the busy time the watchdog compares. The watchdog itself: tests/test_watchdog.py; on Slurm:
tests/test_hang_slurm.py."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Dict, List, Set

import pytest

from ernie_cluster.launch.watchdog import Limits, assess, read_heartbeats
from ernie_cluster.train.heartbeat import DUMP_SIGNAL, heartbeat_dir, stack_file
from test_train_support import Trainer, make_run, read_jsonl, tiny_spec, toy_data  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class PhaseWatcher:
    """Reads a rank's beat file every few milliseconds: the phases it went through, in order."""

    def __init__(self, path: Path):
        self.path, self.phases, self.beats = path, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                beat = json.loads(self.path.read_text())
            except (OSError, ValueError):
                beat = None
            if beat is not None:
                if not self.phases or self.phases[-1] != beat["phase"]:
                    self.phases.append(beat["phase"])
                self.beats.append(beat)
            time.sleep(0.002)

    def stop(self) -> List[str]:
        self._stop.set()
        self._thread.join()
        return self.phases


def test_the_trainer_beats_per_step_and_phase_and_dumps_its_stacks(tmp_path, toy_data):
    # eval_iters 8: an evaluation long enough to be seen by a reader polling the file every 2 ms
    run = make_run(tmp_path, tiny_spec(tmp_path, toy_data, max_steps=24, eval_iters=8))
    t = Trainer(run, "beats")
    beat_file = heartbeat_dir(t.control) / "rank0.json"
    t.wait_for(beat_file.exists, what="the first heartbeat")
    watcher = PhaseWatcher(beat_file)
    t.wait_for(lambda: len(read_jsonl(t.loss_log)) >= 6, what="step 6")
    t.kill(DUMP_SIGNAL)  # what the watchdog sends a hung trainer: the stacks, and the run goes on
    assert t.wait() == 0, t.output[-3000:]
    phases = watcher.stop()

    assert t.exit_record()["reason"] == "completed"
    final = json.loads(beat_file.read_text())
    assert final["phase"] == "done" and final["step"] == 24 and final["rank"] == 0 and final["pid"] == t.proc.pid
    assert len(final["step_times"]) == 24 and len(final["busy_times"]) == 24
    assert all(0 < b <= s for b, s in zip(final["busy_times"], final["step_times"]))
    # every phase the watchdog gives a limit of its own, in the order the trainer goes through them
    assert phases[0] == "start-up" and phases[-1] == "done", phases
    assert {"start-up", "data", "train", "evaluation", "checkpoint", "done"} <= set(phases), phases
    assert phases.index("data") < phases.index("train") < phases.index("checkpoint"), phases
    # steps are beaten while training (rate-limited to one write a second, and every phase change)
    steps = sorted({b["step"] for b in watcher.beats if b["step"] is not None})
    assert steps and steps[-1] == 24

    stacks = stack_file(run, 0).read_text()  # beside the control directory, as beside paddle's worker logs
    assert stacks.startswith(f"# Python stacks of pid {t.proc.pid}")
    assert "most recent call first" in stacks and "ernie_cluster/train/trainer.py" in stacks, stacks
    stats = re.search(r"heartbeats: (\d+) \((\d+) files written\), ([\d.]+) us each", t.output)
    assert stats, t.output[-2000:]
    calls, writes, cost_us = int(stats.group(1)), int(stats.group(2)), float(stats.group(3))
    assert calls >= 24 and writes <= calls and cost_us < 1000, stats.group(0)


def test_a_slowed_rank_shows_in_its_busy_time_and_is_a_straggler_for_the_watchdog(tmp_path, toy_data):
    # One process, rank 0, slowed by the test hook; its beats against a made-up fast peer's.
    run = make_run(tmp_path, tiny_spec(tmp_path, toy_data, max_steps=12, eval_iters=0, checkpoint_steps=100))
    t = Trainer(run, "slow", ERNIE_CLUSTER_TEST_SLOW_RANK="0:0.2")
    assert t.wait() == 0, t.output[-3000:]
    slow = read_heartbeats(heartbeat_dir(t.control))[0]
    assert min(slow.busy_times) >= 0.2 and slow.median_busy_s >= 0.2
    fast = slow.__class__(**{**slow.__dict__, "rank": 1, "phase": "train",
                             "busy_times": tuple(b - 0.2 for b in slow.busy_times)})
    verdict = assess({0: slow.__class__(**{**slow.__dict__, "phase": "train"}), 1: fast}, slow.time, Limits())
    assert [s.rank for s in verdict.stragglers] == [0] and not verdict.hung
