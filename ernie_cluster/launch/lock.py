"""The run's lock: node 0 holds RUN/train.lock (flock, non-blocking) for the whole attempt."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import IO, Optional, Tuple

from ..rundir import RunDir
from .cluster_env import ClusterEnvironment


def acquire_run_lock(run: RunDir, cenv: ClusterEnvironment) -> Tuple[Optional[IO[str]], Optional[str]]:
    """Take RUN/train.lock: (handle, None) on success, else (None, who holds it). Writes nothing when it fails."""
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.train_lock, os.O_RDWR | os.O_CREAT, 0o644)
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    for tries_left in range(10, -1, -1):  # `submit` probes the lock for an instant: retry briefly
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if tries_left:
                time.sleep(0.2)
    else:
        try:
            holder = handle.read().strip() or "(no details)"
        except OSError:
            holder = "(unreadable)"
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"job_id": cenv.job_id, "restart": cenv.restart_count, "host": socket.gethostname(),
                             "pid": os.getpid(), "since": time.time()}) + "\n")
    handle.flush()
    return handle, None


def release_run_lock(handle: Optional[IO[str]]) -> None:
    """Close the lock's file, which releases the flock; None: nothing held."""
    if handle is not None:
        handle.close()
