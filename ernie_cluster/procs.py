"""Process checks on Linux, shared by the submit side (is the local supervisor alive?) and the node
launcher (which trainer pids are still running?)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def _stat_fields(pid: int) -> Optional[list]:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces and parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, *, cmdline_contains: Optional[str] = None) -> bool:
    """True for a running process (a zombie is not alive); with `cmdline_contains`, only when its command
    line holds that text too, so a pid reused by another program does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):
        return False
    if cmdline_contains is not None:
        try:
            return cmdline_contains in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
    return True


def start_ticks(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot, to tell a reused pid apart."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None
