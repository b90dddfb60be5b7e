"""The stop protocol between the node launcher and the trainers.

* SIGUSR1, SIGUSR2, SIGTERM and SIGINT only set a flag (`StopFlag`); nothing is saved
  inside a handler. The training loop polls the flag at every step boundary, the ranks
  agree on it (any rank stopping stops all), a checkpoint is saved at that boundary and
  the trainer exits 0. Only USR1/USR2 are relied on: paddle's own SIGTERM handler, once
  paddle has installed it, replaces this one and ends the trainer at once (seen in the hang
  tests), so the launcher asks trainers to stop with SIGUSR2 (supervise.STOP_SIGNAL), never TERM.
* With ``$ERNIE_CLUSTER_CONTROL_DIR`` set, a trainer writes

  - ``trainer.<global_rank>.pid`` at start (the node launcher forwards signals to these
    pids: ``paddle.distributed.launch`` starts trainers with setsid and does not forward
    SIGUSR1/2),
  - ``ready.<global_rank>`` once its first collective with every other rank returned (the node
    launcher's start watchdog waits for these: a rendezvous that hangs is stopped, not waited
    out until the time limit),
  - ``heartbeat/rank<global_rank>.json``: its progress, per step and per phase, for the node launcher's
    hang watchdog (`heartbeat`), and
  - ``exit.<global_rank>.json`` at the end:
    ``{"reason": "stopped", "step": N, "signal": "SIGUSR2"}``,
    ``{"reason": "completed", "step": N}`` or
    ``{"reason": "failed", "step": N, "error": "...", "kind": K}`` with K ``nonfinite`` or
    ``setup`` (an incompatible checkpoint, bad data: never worth a requeue) or ``crash`` (an
    exception, which `cluster.requeue.max_failure_requeues` may retry).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Optional

CONTROL_DIR_ENV = "ERNIE_CLUSTER_CONTROL_DIR"
STOP_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT")


class StopFlag:
    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self.count = 0

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        # Only record; all the work happens at the next step boundary.
        self.count += 1
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def install(self) -> "StopFlag":
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                signal.signal(sig, self._handler)
        return self

    def set(self, name: str) -> None:
        if self.signal_name is None:
            self.signal_name = name


def control_dir() -> Optional[Path]:
    value = os.environ.get(CONTROL_DIR_ENV)
    return Path(value) if value else None


def _write_atomic_json(path: Path, data: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_pid(rank: int) -> None:
    d = control_dir()
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".trainer.{rank}.pid.tmp"
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, d / f"trainer.{rank}.pid")


def write_ready(rank: int) -> None:
    d = control_dir()
    if d is not None:
        (d / f"ready.{rank}").write_text(f"{time.time()}\n")


def write_exit(rank: int, reason: str, step: Optional[int], **extra: Any) -> None:
    d = control_dir()
    if d is None:
        return
    record: Dict[str, Any] = {"reason": reason, "step": step, "pid": os.getpid(), "time": time.time()}
    record.update({k: v for k, v in extra.items() if v is not None})
    _write_atomic_json(d / f"exit.{rank}.json", record)
