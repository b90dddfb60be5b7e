"""Durable files and directories: fsync, content hashes and atomic directory replacement.

One home for what checkpoints, snapshots, converted models and fetched pretrained models all need,
so that "complete once renamed" means the same thing everywhere. No paddle, no numpy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path


def fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Best effort: some file systems refuse to open or fsync a directory."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move a complete `tmp` directory to `out_dir`, replacing any old one, then fsync the parent.

    The old directory is moved aside first and removed only after the new one is in place, so a
    crash leaves either the old or the new directory, never a mix.
    """
    if out_dir.exists():
        aside = out_dir.parent / f".old.{out_dir.name}.{int(time.time() * 1000)}"
        os.replace(out_dir, aside)
        os.replace(tmp, out_dir)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
