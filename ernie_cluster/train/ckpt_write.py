"""Writing checkpoints durably: the collective save, the ``model_last`` link, pruning, and
``from_pretrained`` model directories (snapshots, conversions).

A save goes into ``.tmp.step_N`` in the same directory. Every file is checksummed while it is written
(`ckpt_io`: one pass over the bytes) and fsynced, the model and optimizer files in parallel; the
manifest is written last, the directory is fsynced and renamed with ``os.replace``, then
``model_last`` is swapped (temp symlink + rename) and only then are checkpoints beyond ``keep`` deleted: by a
thread, so the save returns once the new checkpoint is durable (the next save, and `wait_pruned` at exit, wait
for it; a deletion cut short leaves ``.old.*`` directories, removed with the stale temporary ones).

Multi-rank saves: all ranks hold identical parameters (data parallel), so only global rank 0
writes the model/optimizer/state files; every rank writes its RNG file; barriers order "temp dir
exists" -> "all files written" -> "manifest + rename done". ``ckpt_async`` writes the same files
from a background thread, without collectives (its docstring has that protocol).

Test hooks (never set in production), in rank 0's part of a save:
``ERNIE_CLUSTER_TEST_SLOW_SAVE=<seconds>`` sleeps that long between the files, so a test can SIGKILL
a trainer in the middle of a save; ``ERNIE_CLUSTER_TEST_HOLD_SAVE=<step>:<file>`` holds the save of
that step, its files written but no manifest, until <file> exists; ``ERNIE_CLUSTER_TEST_FAIL_SAVE=<step>``
makes the save of that step fail at the same point.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..durable import fsync_dir, fsync_file, replace_dir
from .ckpt_format import (FORMAT_VERSION, LAST_LINK, MANIFEST_FILE, MODEL_FILE, OPT_FILE, STATE_FILE, STEP_GLOB,
                          TMP_PREFIX, STEP_RE, rng_file, step_dir_name)
from .ckpt_io import file_meta, pickle_bytes, write_bytes, write_bytes_atomic, write_pickle
from .ckpt_read import CheckpointInfo, LoadedCheckpoint, list_step_dirs, load_checkpoint, verify_checkpoint
from .ckpt_format import CheckpointError, json_default
from .engine_common import Collective

log = logging.getLogger("ernie_cluster.train")

SLOW_SAVE_ENV = "ERNIE_CLUSTER_TEST_SLOW_SAVE"
HOLD_SAVE_ENV = "ERNIE_CLUSTER_TEST_HOLD_SAVE"
FAIL_SAVE_ENV = "ERNIE_CLUSTER_TEST_FAIL_SAVE"


# ---------------------------------------------------------------------------
# small file-system helpers
# ---------------------------------------------------------------------------


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=json_default) + "\n").encode("utf-8")


def write_json(path: Path, data: Any) -> None:
    write_bytes(path, json_bytes(data))


def paddle_save(obj: Any, path: Path, *, fsync: bool = True) -> None:
    import paddle

    paddle.save(obj, str(path))
    if fsync:
        fsync_file(path)


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


def _hold_or_fail(step: int) -> None:
    """The hold and failure test hooks, for the save of `step`."""
    if os.environ.get(FAIL_SAVE_ENV, "").strip() == str(step):
        raise OSError(f"{FAIL_SAVE_ENV}: simulated failure of the save of step {step}")
    hold_step, _, release = os.environ.get(HOLD_SAVE_ENV, "").partition(":")
    if release and hold_step.strip() == str(step):
        log.info("%s: holding the save of step %d until %s exists", HOLD_SAVE_ENV, step, release)
        while not os.path.exists(release):
            time.sleep(0.05)


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
        self._pruning: Optional[threading.Thread] = None

    def paths(self, step: int) -> Tuple[Path, Path]:
        """(temporary, final) directory of the save of `step`."""
        return self.dir / f"{TMP_PREFIX}{step_dir_name(step)}", self.dir / step_dir_name(step)

    def clean_stale(self, before: Optional[int] = None) -> None:
        """Rank 0: remove the temporary directories of interrupted saves (only those of steps before `before`) and
        what an interrupted deletion left."""
        for stale in self.dir.glob(TMP_PREFIX + STEP_GLOB):
            m = STEP_RE.match(stale.name[len(TMP_PREFIX):])
            if before is None or (m is not None and int(m.group(1)) < before):
                shutil.rmtree(stale, ignore_errors=True)
        self.wait_pruned()
        for leftover in self.dir.glob(".old.*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def wait_pruned(self) -> None:
        """Until the deletion of old checkpoints in progress (if any) ends."""
        if self._pruning is not None:
            self._pruning.join()
            self._pruning = None

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
        tmp, final = self.paths(step)
        t0 = time.time()
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.clean_stale()  # waits for the previous save's deletions first
            tmp.mkdir()
        self.collective.barrier()
        digests = {rng_file(self.rank): self.write_rng(tmp, rng_state)}
        if self.rank == 0:
            digests.update(self.write_rank0_files(step, tmp, model_state(), optimizer_state(), trainer_state))
        self.collective.barrier()
        if self.rank == 0:
            self.finish(step, tmp, final, digests, prune_now=False)
            log.info("checkpoint step %d saved to %s in %.2fs", step, final, time.time() - t0)
        self.collective.barrier()
        return final

    def write_rng(self, tmp: Path, rng_state: Dict[str, Any]) -> Dict[str, Any]:
        """Every rank's own file: its RNG state (renamed into place whole: a peer may be watching for it)."""
        return write_bytes_atomic(tmp / rng_file(self.rank), pickle_bytes(rng_state))

    def write_rank0_files(self, step: int, tmp: Path, model: Dict[str, np.ndarray], optimizer: Dict[str, Any],
                          trainer_state: Dict[str, Any]) -> Dict[str, Any]:
        """Model, optimizer (in parallel, each checksummed as it is written) and trainer state: {file: {size, checksum}}."""
        _slow_save_pause()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckpt-write") as pool:
            # the optimizer file (two moments) is the bigger one: it starts first
            futures = {OPT_FILE: pool.submit(write_pickle, tmp / OPT_FILE, optimizer),
                       MODEL_FILE: pool.submit(write_pickle, tmp / MODEL_FILE, model)}
            digests = {name: f.result() for name, f in futures.items()}
        _slow_save_pause()
        digests[STATE_FILE] = write_bytes(tmp / STATE_FILE, json_bytes(trainer_state))
        _slow_save_pause()
        _hold_or_fail(step)
        return digests

    def finish(self, step: int, tmp: Path, final: Path, digests: Dict[str, Any], *, prune_now: bool = True) -> None:
        """Rank 0, once every rank's files are in `tmp`: manifest, rename into place, model_last, prune (here, or
        by a thread with `prune_now=False`)."""
        names = [MODEL_FILE, OPT_FILE, STATE_FILE] + [rng_file(r) for r in range(self.world_size)]
        missing = [name for name in names if not (tmp / name).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint step {step}: files missing when the manifest is due: {missing}")
        # the big files were checksummed as they were written; a peer's RNG file (a few KB) is read here
        files = {name: digests.get(name) or file_meta(tmp / name) for name in names}
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
        if prune_now:
            self.prune()
        else:
            self.wait_pruned()
            self._pruning = threading.Thread(target=self._prune_logged, name="ckpt-prune")
            self._pruning.start()

    def _prune_logged(self) -> None:
        try:
            self.prune()
        except Exception:  # noqa: BLE001 - old checkpoints left behind cost disk, never the run
            log.exception("removing old checkpoints failed; they are left in %s", self.dir)

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
