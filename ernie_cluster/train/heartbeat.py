"""Trainer-side progress reports for the node launcher's hang watchdog (`ernie_cluster.launch.watchdog`).

Every trainer rank owns one small JSON file, ``<directory>/rank<k>.json``, replaced atomically (a tmp file,
then `os.replace`), so a reader sees the old beat or the new one, never half of one::

    {"rank": 3, "pid": 4711, "host": "gpu07", "phase": "train", "step": 1200, "time": 1718000000.1,
     "phase_started": 1717999000.0, "step_times": [0.61, ...], "busy_times": [0.05, ...]}

* `Heartbeat.phase(name)` marks the long stretches without steps: start-up, data, evaluation, checkpoint
  (the watchdog gives each its own limit); `during(name)` does so for a `with` block. A phase change is
  written at once.
* `Heartbeat.step(step, step_time_s, busy_s)` after every optimizer step. Writes are rate-limited
  (`min_interval_s`, 1 s): at 10 steps/s only one step in ten touches the file, the others cost a few
  microseconds (`Heartbeat.cost` counts both). The file's `time` is then at most `min_interval_s` behind
  the last step, far below any limit the watchdog applies.
* `busy_s` is the part of the step this rank spent on its own work, not waiting for the others
  (a straggler shows there: in synchronous data parallel the slowest rank sets everybody's wall step time).

`install_stack_dump(path)` makes the trainer write every Python thread's stack into a per-rank file when
it receives `DUMP_SIGNAL`, from faulthandler's C-level handler: it works while the main thread is stuck
in a collective, a C call or holds the GIL, which a Python-level handler would not.

Stdlib only, and no paddle: written by the trainer, read by the launcher.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Deque, Dict, Iterator, List, Optional, Union

log = logging.getLogger("ernie_cluster.train")

HEARTBEAT_SUBDIR = "heartbeat"  # under the node's control directory ($ERNIE_CLUSTER_CONTROL_DIR)
PHASES = ("start-up", "data", "train", "evaluation", "checkpoint", "done")
WINDOW = 50  # recent step times kept: a median over the last minute or so of training
MIN_INTERVAL_S = 1.0

# SIGURG: its default action is "ignore", so one arriving before the handler is installed (or at a
# process that never installs it) does no harm. Nothing in the stack sends it: Slurm uses TERM, KILL,
# CONT/STOP (suspend) and the --signal warning; our requeue protocol USR1/USR2 (supervise.STOP_SIGNAL,
# control.STOP_SIGNALS) plus TERM/INT; paddle.distributed.launch TERM/INT/ABRT/ALRM; paddle's core the
# fatal signals and (DataLoader) CHLD; NCCL and gloo none. The kernel sends SIGURG only for TCP
# out-of-band data on a socket this process owns (F_SETOWN), which neither gloo nor NCCL use.
# Not SIGTTIN/SIGTSTP (default: stop the process), SIGPWR/SIGRTMIN+n (default: terminate; NPTL owns
# the first real-time ones), SIGCHLD (paddle's DataLoader handler), SIGWINCH (a terminal's).
DUMP_SIGNAL = signal.SIGURG

_dump_files: List[IO[Any]] = []  # faulthandler writes to their descriptors: keep them open for good


def heartbeat_dir(control_dir: Union[str, Path]) -> Path:
    """Where the trainers of a node beat: a subdirectory of its control directory (no name clash there)."""
    return Path(control_dir) / HEARTBEAT_SUBDIR


def beat_file(directory: Union[str, Path], rank: int) -> Path:
    return Path(directory) / f"rank{rank}.json"


def stack_file(log_dir: Union[str, Path], rank: int) -> Path:
    """Rank `rank`'s stack dumps: in the node's log directory, beside paddle's workerlog.* files."""
    return Path(log_dir) / f"stacks.rank{rank}.txt"


class Heartbeat:
    """One trainer's progress file. `directory=None` gives a no-op heartbeat (no launcher watching)."""

    def __init__(self, directory: Optional[Union[str, Path]], rank: int, *,
                 min_interval_s: float = MIN_INTERVAL_S, window: int = WINDOW, phase: str = "start-up"):
        self.rank = rank
        self.path = beat_file(directory, rank) if directory is not None else None
        self.min_interval_s = min_interval_s
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.phase_name = phase
        self.phase_started = time.time()
        self.last_step: Optional[int] = None
        self.step_times: Deque[float] = deque(maxlen=window)
        self.busy_times: Deque[float] = deque(maxlen=window)
        self.written_at = float("-inf")
        self.calls = 0  # beats asked for (phase + step)
        self.writes = 0  # files written
        self.cost_s = 0.0  # time spent inside phase()/step(), writes included
        self._broken = False  # a write failed: warned once, then retried silently
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(time.time())

    @property
    def enabled(self) -> bool:
        return self.path is not None

    @property
    def cost(self) -> float:
        """Mean seconds per beat so far (the amortised cost the training loop pays)."""
        return self.cost_s / max(1, self.calls)

    def phase(self, name: str) -> None:
        """Enter phase `name`; written at once, whatever the rate limit (it restarts the watchdog's clock)."""
        if self.path is None:
            return
        t0 = time.perf_counter()
        now = time.time()
        self.phase_name, self.phase_started = name, now
        self._write(now)
        self.calls += 1
        self.cost_s += time.perf_counter() - t0

    def step(self, step: int, step_time_s: float, busy_s: Optional[float] = None) -> None:
        """Step `step` is done after `step_time_s` (wall), `busy_s` of it on this rank's own work."""
        if self.path is None:
            return
        t0 = time.perf_counter()
        now = time.time()
        self.last_step = step
        self.step_times.append(step_time_s)
        self.busy_times.append(step_time_s if busy_s is None else busy_s)
        if self.phase_name != "train":  # a step means training, whatever was marked before
            self.phase_name, self.phase_started = "train", now
            self._write(now)
        elif now - self.written_at >= self.min_interval_s:
            self._write(now)
        self.calls += 1
        self.cost_s += time.perf_counter() - t0

    @contextlib.contextmanager
    def during(self, name: str) -> Iterator["Heartbeat"]:
        """`with hb.during("checkpoint"): ...`: phase `name` for the block, then back to the phase before."""
        previous = self.phase_name
        self.phase(name)
        try:
            yield self
        finally:
            self.phase(previous)

    def record(self, now: float) -> Dict[str, Any]:
        # Rounded: a 50-entry window stays well under 1 KiB, one small write.
        return {"rank": self.rank, "pid": self.pid, "host": self.host, "phase": self.phase_name,
                "step": self.last_step, "time": now, "phase_started": self.phase_started,
                "step_times": [round(t, 4) for t in self.step_times],
                "busy_times": [round(t, 4) for t in self.busy_times]}

    def _write(self, now: float) -> None:
        """Replace the beat file. No fsync: the reader is the launcher on this node (or a status on the
        login node), and a beat lost in a crash is worthless anyway; fsync would cost milliseconds."""
        assert self.path is not None
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # one writer per rank: a fixed name is safe
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.record(now), separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError as exc:  # a full or flaky file system must never stop training
            if not self._broken:
                log.warning("heartbeat %s not written (%s); the launcher may take this rank for hung", self.path, exc)
            self._broken = True
            return
        self.written_at = now
        self.writes += 1


def install_stack_dump(target: Union[str, Path, IO[Any]], signum: int = DUMP_SIGNAL) -> IO[Any]:
    """On `signum`, write the Python stack of every thread to `target` (a path, opened for append, or an
    open file); returns the file. chain=False: the signal has no other handler to call, and its default
    action must not run after the dump."""
    if isinstance(target, (str, Path)):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        f: IO[Any] = open(target, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process's life
    else:
        f = target
    # A header, so a reader knows whose stacks these are; every dump after it starts with "Thread 0x...".
    f.write(f"# Python stacks of pid {os.getpid()} on {socket.gethostname()}, one dump per "
            f"{signal.Signals(signum).name} (sent by the node launcher's hang watchdog)\n")
    f.flush()
    faulthandler.register(signum, file=f, all_threads=True, chain=False)
    _dump_files.append(f)
    return f
