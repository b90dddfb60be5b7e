"""Test hooks of the training loop, read from the environment once at start-up (never set in production).

* ERNIE_CLUSTER_TEST_STOP_AT_STEP=N: behave as if a stop signal arrived right after step N.
* ERNIE_CLUSTER_TEST_CRASH_ONCE=N:<marker file>: rank 0 raises after step N, once per run (the marker makes it
  once, as a transient fault would be).
* ERNIE_CLUSTER_TEST_SLOW_RANK=<rank>:<seconds>: that rank sleeps this long after every step, inside its own
  work (a straggler for the hang watchdog's step-time skew).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

STOP_AT_ENV = "ERNIE_CLUSTER_TEST_STOP_AT_STEP"
CRASH_ONCE_ENV = "ERNIE_CLUSTER_TEST_CRASH_ONCE"
SLOW_RANK_ENV = "ERNIE_CLUSTER_TEST_SLOW_RANK"


@dataclass(frozen=True)
class Hooks:
    rank: int
    stop_at_step: Optional[int] = None
    crash_step: Optional[int] = None
    crash_marker: str = ""
    slow_s: float = 0.0

    @classmethod
    def from_environ(cls, rank: int, environ: Mapping[str, str] = os.environ) -> "Hooks":
        stop_at = environ.get(STOP_AT_ENV)
        crash_step, _, crash_marker = environ.get(CRASH_ONCE_ENV, "").partition(":")
        slow_rank, _, slow_s = environ.get(SLOW_RANK_ENV, "").partition(":")
        return cls(rank, int(stop_at) if stop_at else None, int(crash_step) if crash_marker else None, crash_marker,
                   float(slow_s) if slow_rank.strip() and int(slow_rank) == rank else 0.0)

    def after_step(self, step: int, stop) -> None:
        """After step `step`: a test's stop "signal" (sets `stop`), the one simulated crash, the slow rank's sleep."""
        if self.stop_at_step is not None and step == self.stop_at_step:
            stop.set("TEST_STOP_AT_STEP")
        if self.crash_marker and self.rank == 0 and step == self.crash_step and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).write_text(f"{step}\n")
            raise RuntimeError(f"{CRASH_ONCE_ENV}: simulated transient fault after step {step}")
        if self.slow_s > 0:
            time.sleep(self.slow_s)
