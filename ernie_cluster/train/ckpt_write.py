"""Writing checkpoints durably: the collective save, the ``model_last`` link, pruning, and
``from_pretrained`` model directories (snapshots, conversions).

A save goes into ``.tmp.step_N`` in the same directory; every file is fsynced, the manifest is
written last, the directory is fsynced and renamed with ``os.replace``, then ``model_last`` is
swapped (temp symlink + rename) and only then are checkpoints beyond ``keep`` deleted.

Multi-rank saves: all ranks hold identical parameters (data parallel), so only global rank 0
writes the model/optimizer/state files; every rank writes its RNG file; barriers order "temp dir
exists" -> "all files written" -> "manifest + rename done".

Test hook: ``ERNIE_CLUSTER_TEST_SLOW_SAVE=<seconds>`` sleeps that long between the files rank 0
writes, so a test can SIGKILL a trainer in the middle of a save.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..durable import fsync_dir, fsync_file, replace_dir, sha256_file
from .ckpt_format import (FORMAT_VERSION, LAST_LINK, MANIFEST_FILE, MODEL_FILE, OPT_FILE, STATE_FILE, STEP_GLOB,
                         TMP_PREFIX, rng_file, step_dir_name)
from .ckpt_read import CheckpointInfo, LoadedCheckpoint, list_step_dirs, load_checkpoint, verify_checkpoint
from .ckpt_format import CheckpointError, json_default
from .engine_common import Collective

log = logging.getLogger("ernie_cluster.train")

SLOW_SAVE_ENV = "ERNIE_CLUSTER_TEST_SLOW_SAVE"


# ---------------------------------------------------------------------------
# small file-system helpers
# ---------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def paddle_save(obj: Any, path: Path, *, fsync: bool = True) -> None:
    import paddle

    paddle.save(obj, str(path))
    if fsync:
        fsync_file(path)


def _digest_and_fsync(path: Path) -> Dict[str, Any]:
    """sha256 + size of a written file, then fsync it (run in a worker thread: both release the GIL)."""
    digest = sha256_file(path)
    fsync_file(path)
    return {"size": path.stat().st_size, "sha256": digest}


def replace_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` (relative) atomically: temp symlink + rename."""
    tmp = link.parent / f".{link.name}.tmp.{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def _slow_save_pause() -> None:
    value = os.environ.get(SLOW_SAVE_ENV)
    if value:
        try:
            time.sleep(float(value))
        except ValueError:
            pass


# ---------------------------------------------------------------------------
# the collective save
# ---------------------------------------------------------------------------


class CheckpointManager:
    def __init__(self, ckpt_dir: Path, rank: int, world_size: int, keep: int, collective: Optional[Collective] = None):
        self.dir = Path(ckpt_dir)
        self.rank = rank
        self.world_size = world_size
        self.keep = max(2, int(keep))
        self.collective = collective or Collective()

    # -- save ---------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        model_state: Callable[[], Dict[str, np.ndarray]],
        optimizer_state: Callable[[], Dict[str, Any]],
        trainer_state: Dict[str, Any],
        rng_state: Dict[str, Any],
    ) -> Path:
        """Collective: every rank calls it at the same step boundary. Returns the final path."""
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f"{TMP_PREFIX}{step_dir_name(step)}"
        t0 = time.time()
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(TMP_PREFIX + STEP_GLOB):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self.collective.barrier()
        self._write_rank_files(tmp, rng_state)
        digests: Dict[str, Any] = {}
        if self.rank == 0:
            digests = self._write_rank0_files(tmp, model_state, optimizer_state, trainer_state)
        self.collective.barrier()
        if self.rank == 0:
            self._finish(step, tmp, final, digests)
            log.info("checkpoint step %d saved to %s in %.2fs", step, final, time.time() - t0)
        self.collective.barrier()
        return final

    def _write_rank_files(self, tmp: Path, rng_state: Dict[str, Any]) -> None:
        """Every rank's own file: its RNG state."""
        with open(tmp / rng_file(self.rank), "wb") as f:
            pickle.dump(rng_state, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())

    def _write_rank0_files(self, tmp: Path, model_state: Callable[[], Dict[str, np.ndarray]],
                           optimizer_state: Callable[[], Dict[str, Any]],
                           trainer_state: Dict[str, Any]) -> Dict[str, Any]:
        """Model, optimizer and trainer state; returns {file: {size, sha256}} of the big two."""
        # Each big file is hashed and fsynced in a worker thread while the next one is written.
        from concurrent.futures import ThreadPoolExecutor

        digests: Dict[str, Any] = {}
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckpt-digest") as pool:
            _slow_save_pause()
            paddle_save(model_state(), tmp / MODEL_FILE, fsync=False)
            digests[MODEL_FILE] = pool.submit(_digest_and_fsync, tmp / MODEL_FILE)
            _slow_save_pause()
            paddle_save(optimizer_state(), tmp / OPT_FILE, fsync=False)
            digests[OPT_FILE] = pool.submit(_digest_and_fsync, tmp / OPT_FILE)
            _slow_save_pause()
            write_json(tmp / STATE_FILE, trainer_state)
            _slow_save_pause()
            return {k: f.result() for k, f in digests.items()}

    def _finish(self, step: int, tmp: Path, final: Path, digests: Optional[Dict[str, Any]] = None) -> None:
        """Rank 0, after every rank wrote its files: manifest, rename into place, model_last, prune."""
        expected = [rng_file(r) for r in range(self.world_size)]
        missing = [name for name in expected if not (tmp / name).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint step {step}: per-rank files missing after the barrier: {missing}")
        files = {}
        digests = digests or {}
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                files[f.name] = digests.get(f.name) or {"size": f.stat().st_size, "sha256": sha256_file(f)}
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files, "world_size": self.world_size,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(tmp / MANIFEST_FILE, manifest)
        fsync_dir(tmp)
        if final.exists():
            ok, _, _ = verify_checkpoint(final, full=False)
            # Same step saved again (a retried save): move the old one aside, never mix files.
            aside = self.dir / f".old.{final.name}.{int(time.time() * 1000)}"
            os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
            if ok:
                log.info("replaced an existing complete checkpoint for step %d", step)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        replace_symlink(self.dir / LAST_LINK, final.name)
        self.prune()

    def prune(self) -> None:
        complete = [(s, p) for s, p in list_step_dirs(self.dir) if (p / MANIFEST_FILE).is_file()]
        if len(complete) <= self.keep:
            return
        oldest_kept = complete[self.keep - 1][0]
        for s, p in list_step_dirs(self.dir):
            if s < oldest_kept:
                aside = self.dir / f".old.{p.name}"
                try:
                    os.replace(p, aside)
                except OSError:
                    continue
                shutil.rmtree(aside, ignore_errors=True)
                log.info("removed old checkpoint %s (keep_checkpoints=%d)", p.name, self.keep)

    # -- load ---------------------------------------------------------------
    def load(self, info: CheckpointInfo) -> LoadedCheckpoint:
        """This rank's view of a verified checkpoint (`ckpt_read.load_checkpoint`)."""
        return load_checkpoint(info, self.rank)


# ---------------------------------------------------------------------------
# model directories (snapshots every save_steps, conversions): loadable by from_pretrained
# ---------------------------------------------------------------------------


def write_model_dir(out_dir: Path, model_state: Dict[str, np.ndarray], write_extras: Callable[[Path], None]) -> Path:
    """Write a from_pretrained-loadable directory atomically (temp dir + rename; an old good one is replaced only whole)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp.{out_dir.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        paddle_save(model_state, tmp / MODEL_FILE)
        write_extras(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                fsync_file(f)
        fsync_dir(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
