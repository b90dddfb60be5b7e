"""Training checkpoints: one engine-neutral format, atomic, verified, with fall-back.

Layout (``RunDir.checkpoints``)::

    checkpoints/
      model_last -> step_000001000        relative symlink to the newest complete checkpoint
      step_000000500/                     kept: the newest `train.keep_checkpoints` complete ones
      step_000001000/
        model_state.pdparams              {structured name: numpy array} (paddle.save); tied aliases included
        optimizer.pdopt                   {"format", "accumulators": {canonical name: {moment1, moment2,
                                           beta1_pow_acc, beta2_pow_acc}}, "loss_scaling", "extra"}
        trainer_state.json                step, consumed_samples, LR schedule state, spec sha256,
                                           compat key, engine, world size, versions
        rng_rank00000.pkl ...             per rank: python `random` and numpy global states, paddle seed scheme
        MANIFEST.json                     written last: size and sha256 of every other file
      .tmp.step_000001500/                a save in progress (never read; removed by the next save)

A save goes into ``.tmp.step_N`` in the same directory; every file is fsynced, the
manifest is written last, the directory is fsynced and renamed with ``os.replace``,
then ``model_last`` is swapped (temp symlink + rename) and only then are checkpoints
beyond ``keep`` deleted. A reader trusts a checkpoint only when its manifest verifies
(every file present, same size and sha256), scanning newest first and skipping damaged
ones with a warning.

Multi-rank saves: all ranks hold identical parameters (data parallel), so only global
rank 0 writes the model/optimizer/state files; every rank writes its RNG file; barriers
order "temp dir exists" -> "all files written" -> "manifest + rename done".

This module is the format's one home: file names and versions (``ckpt_names``, standard
library only, re-exported here), ``build_trainer_state`` (trainer_state.json) and the
optimizer-state layout (``ACC_KINDS``, ``ACC_RE``, ``empty_optimizer_state`` ...) both
engines use.

Test hook: ``ERNIE_CLUSTER_TEST_SLOW_SAVE=<seconds>`` sleeps that long between the files
rank 0 writes, so a test can SIGKILL a trainer in the middle of a save.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..durable import fsync_dir, fsync_file, replace_dir, sha256_file  # noqa: F401 - part of this module's API

log = logging.getLogger("ernie_cluster.train")

# File names and format versions live in ckpt_names (standard library only, for submit-side readers).
from .ckpt_names import (FORMAT_VERSION, LAST_LINK, MANIFEST_FILE, MODEL_FILE, OPT_FILE, OPT_FORMAT,  # noqa: F401,E402
                         STATE_FILE, STEP_GLOB, STEP_RE, TMP_PREFIX, opt_shard_file, rng_file, step_dir_name)

SLOW_SAVE_ENV = "ERNIE_CLUSTER_TEST_SLOW_SAVE"


# ---------------------------------------------------------------------------
# trainer_state.json
# ---------------------------------------------------------------------------


def build_trainer_state(*, step: int, global_batch_size: int, lr_schedule: Dict[str, Any], spec_sha256: str,
                        compat_key: Dict[str, Any], engine: str, world_size: int, dp_degree: int,
                        accumulate_steps: int, model_config: Dict[str, Any], max_steps: int,
                        starting_weights: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The trainer_state.json of a checkpoint at `step` (versions and the save time filled in here)."""
    import paddle

    try:
        import paddlenlp

        nlp_version = paddlenlp.__version__
    except Exception:  # noqa: BLE001
        nlp_version = None
    return {
        "format": FORMAT_VERSION, "step": step, "consumed_samples": step * global_batch_size,
        "global_batch_size": global_batch_size, "lr_schedule": lr_schedule,
        "spec_sha256": spec_sha256, "compat_key": compat_key, "engine": engine,
        "world_size": world_size, "dp_degree": dp_degree, "accumulate_steps": accumulate_steps,
        "paddle_version": paddle.__version__, "paddlenlp_version": nlp_version, "model_config": model_config,
        "saved_at": time.time(), "max_steps": max_steps, "starting_weights": starting_weights,
    }


# ---------------------------------------------------------------------------
# optimizer.pdopt: the engine-neutral AdamW state
# ---------------------------------------------------------------------------

# Per parameter (by structured/canonical name): these four accumulators.
ACC_KINDS = ("moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc")
# A static program's accumulator variable: <parameter variable>_<kind>_<n>.
ACC_RE = re.compile(r"^(?P<param>.+)_(?P<kind>moment1|moment2|beta1_pow_acc|beta2_pow_acc)_\d+$")
# AMP dynamic loss scaling ("loss_scaling" in the state): scale, good and bad step counters.
LOSS_SCALING_KEYS = ("loss_scaling", "num_good_steps", "num_bad_steps")


def empty_optimizer_state() -> Dict[str, Any]:
    """{"format", "accumulators": {name: {kind: array}}, "loss_scaling": None | {key: array}, "extra": {}}."""
    return {"format": OPT_FORMAT, "accumulators": {}, "loss_scaling": None, "extra": {}}


def sharded_optimizer_index(world_size: int, loss_scaling: Any) -> Dict[str, Any]:
    """optimizer.pdopt of a sharded save: an index; the accumulators are in optimizer_rank<r>.pdopt."""
    return {"format": OPT_FORMAT, "sharded": world_size, "accumulators": {}, "loss_scaling": loss_scaling, "extra": {}}


def put_accumulator(state: Dict[str, Any], name: str, kind: str, value: Any) -> None:
    state["accumulators"].setdefault(name, {})[kind] = value


def get_accumulator(state: Dict[str, Any], name: str, kind: str) -> Any:
    """The saved `kind` accumulator of parameter `name`; KeyError when the state lacks it."""
    value = state.get("accumulators", {}).get(name, {}).get(kind)
    if value is None:
        raise KeyError(f"optimizer state lacks {kind} of {name}")
    return value


class CheckpointError(RuntimeError):
    """A checkpoint problem the user must act on (the trainer exits non-zero, no requeue loop)."""


class IncompatibleCheckpoint(CheckpointError):
    pass


class Collective:
    """What checkpointing needs from the engine's process group; single-process defaults."""

    def barrier(self) -> None:  # pragma: no cover - trivial
        pass

    def max_int(self, value: int) -> int:
        return int(value)

    def sum_floats(self, values):
        return [float(v) for v in values]


# ---------------------------------------------------------------------------
# small file-system helpers
# ---------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


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


def paddle_load(path: Path) -> Any:
    import paddle

    return paddle.load(str(path), return_numpy=True)


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
# RNG state (per rank)
# ---------------------------------------------------------------------------


def capture_rng(rank: int, paddle_seed_scheme: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "rank": rank,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        # Paddle's generator state cannot be serialised faithfully (its pickle keeps only
        # the seed), so the trainers re-seed paddle at every step from (seed, rank, step):
        # this scheme *is* the paddle RNG state.
        "paddle": dict(paddle_seed_scheme),
    }


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


# ---------------------------------------------------------------------------
# manifest verification
# ---------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    manifest: Dict[str, Any] = field(default_factory=dict)
    trainer_state: Dict[str, Any] = field(default_factory=dict)


def list_step_dirs(ckpt_dir: Path) -> List[Tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    out = []
    for entry in ckpt_dir.iterdir():
        m = STEP_RE.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink():
            out.append((int(m.group(1)), entry))
    return sorted(out, reverse=True)


def verify_checkpoint(path: Path, *, full: bool = True) -> Tuple[bool, str, Optional[CheckpointInfo]]:
    """Check a checkpoint directory against its manifest. Returns (ok, reason, info)."""
    m = STEP_RE.match(path.name)
    if not m:
        return False, f"{path.name} is not a step_<N> directory", None
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False, "no MANIFEST.json (the save did not finish)", None
    except (OSError, ValueError) as exc:
        return False, f"unreadable MANIFEST.json: {exc}", None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False, "MANIFEST.json lists no files", None
    for required in (MODEL_FILE, OPT_FILE, STATE_FILE, rng_file(0)):
        if required not in files:
            return False, f"MANIFEST.json does not list {required}", None
    for name, meta in files.items():
        f = path / name
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            return False, f"{name} is missing", None
        if size != meta.get("size"):
            return False, f"{name} has {size} bytes, the manifest says {meta.get('size')}", None
    if full:
        from concurrent.futures import ThreadPoolExecutor

        names = sorted(files, key=lambda n: -int(files[n].get("size") or 0))
        with ThreadPoolExecutor(max_workers=min(4, len(names)), thread_name_prefix="ckpt-verify") as pool:
            digests = dict(zip(names, pool.map(lambda n: sha256_file(path / n), names)))
        for name, meta in files.items():
            digest = digests[name]
            if digest != meta.get("sha256"):
                return False, f"{name} is corrupted (sha256 {digest[:12]}... != manifest {str(meta.get('sha256'))[:12]}...)", None
    if int(manifest.get("step", -1)) != int(m.group(1)):
        return False, f"manifest step {manifest.get('step')} does not match the directory name", None
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return False, f"unreadable {STATE_FILE}: {exc}", None
    return True, "ok", CheckpointInfo(path=path, step=int(m.group(1)), manifest=manifest, trainer_state=state)


def compat_differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted field paths whose values differ, as 'field: checkpoint X, spec Y'."""
    diffs: List[str] = []
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += compat_differences(a, b, path + ".")
        elif a != b:
            hint = ""
            if path == "data.shuffle_documents" and a == "<absent>":
                hint = " (the checkpoint's run used contiguous splits: set data.shuffle_documents: false to continue it)"
            diffs.append(f"{path}: checkpoint {a!r}, spec {b!r}{hint}")
    return diffs


def find_latest(ckpt_dir: Path, compat_key: Optional[Dict[str, Any]] = None, *, full: bool = True) -> Optional[CheckpointInfo]:
    """Newest checkpoint whose manifest verifies; damaged ones are skipped with a warning.

    Raises IncompatibleCheckpoint when the newest complete checkpoint was written by a spec
    with a different compat key (global batch, sequence length, model shape, data, seed).
    """
    for step, path in list_step_dirs(ckpt_dir):
        ok, reason, info = verify_checkpoint(path, full=full)
        if not ok:
            log.warning("checkpoint %s is damaged and skipped: %s", path, reason)
            continue
        assert info is not None
        if compat_key is not None:
            # Only the fields the caller names: the converter knows the spec, the trainer the corpus too.
            saved = {k: v for k, v in info.trainer_state.get("compat_key", {}).items() if k in compat_key}
            saved_norm = json.loads(json.dumps(saved, sort_keys=True))
            cur_norm = json.loads(json.dumps(compat_key, sort_keys=True, default=_json_default))
            diffs = compat_differences(saved_norm, cur_norm)
            if diffs:
                raise IncompatibleCheckpoint(
                    f"checkpoint {path} was written by an incompatible spec; these fields differ:\n  "
                    + "\n  ".join(diffs)
                    + "\nResuming would silently change the data order or the model. Fix: either use a new "
                    "output_dir for this spec (a fresh run), or put the checkpoint's values back into the spec "
                    "to continue this run.")
        return info
    return None


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    info: CheckpointInfo
    model_state: Dict[str, np.ndarray]
    optimizer: Dict[str, Any]
    rng: Optional[Dict[str, Any]]

    @property
    def step(self) -> int:
        return self.info.step

    @property
    def trainer_state(self) -> Dict[str, Any]:
        return self.info.trainer_state


class CheckpointManager:
    def __init__(self, ckpt_dir: Path, rank: int, world_size: int, keep: int, collective: Optional[Collective] = None,
                 sharded_optimizer: bool = False):
        self.dir = Path(ckpt_dir)
        self.rank = rank
        self.world_size = world_size
        self.keep = max(2, int(keep))
        self.collective = collective or Collective()
        # With optimizer-state sharding (static engine, sharding_degree > 1) every rank holds the
        # Adam state of its own parameters only: each rank writes optimizer_rank<r>.pdopt and
        # optimizer.pdopt is an index; loading merges all shards (any rank count, either engine).
        self.sharded_optimizer = bool(sharded_optimizer) and world_size > 1

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
        with open(tmp / rng_file(self.rank), "wb") as f:
            pickle.dump(rng_state, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        shard = None
        if self.sharded_optimizer:
            shard = optimizer_state()
            paddle_save(shard, tmp / opt_shard_file(self.rank))
        digests: Dict[str, Any] = {}
        if self.rank == 0:
            # Each big file is hashed and fsynced in a worker thread while the next one is written.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ckpt-digest") as pool:
                _slow_save_pause()
                paddle_save(model_state(), tmp / MODEL_FILE, fsync=False)
                digests[MODEL_FILE] = pool.submit(_digest_and_fsync, tmp / MODEL_FILE)
                _slow_save_pause()
                if shard is not None:
                    index = sharded_optimizer_index(self.world_size, shard.get("loss_scaling"))
                    paddle_save(index, tmp / OPT_FILE, fsync=False)
                else:
                    paddle_save(optimizer_state(), tmp / OPT_FILE, fsync=False)
                digests[OPT_FILE] = pool.submit(_digest_and_fsync, tmp / OPT_FILE)
                _slow_save_pause()
                write_json(tmp / STATE_FILE, trainer_state)
                _slow_save_pause()
                digests = {k: f.result() for k, f in digests.items()}
        self.collective.barrier()
        if self.rank == 0:
            self._finish(step, tmp, final, digests)
            log.info("checkpoint step %d saved to %s in %.2fs", step, final, time.time() - t0)
        self.collective.barrier()
        return final

    def _finish(self, step: int, tmp: Path, final: Path, digests: Optional[Dict[str, Any]] = None) -> None:
        expected = [rng_file(r) for r in range(self.world_size)]
        if self.sharded_optimizer:
            expected += [opt_shard_file(r) for r in range(self.world_size)]
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
        model_state = paddle_load(info.path / MODEL_FILE)
        optimizer = paddle_load(info.path / OPT_FILE)
        if not isinstance(optimizer, dict) or optimizer.get("format") != OPT_FORMAT:
            raise CheckpointError(f"{info.path / OPT_FILE} is not an {OPT_FORMAT} optimizer state")
        if optimizer.get("sharded"):
            n = int(optimizer["sharded"])
            for r in range(n):
                name = opt_shard_file(r)
                if name not in info.manifest.get("files", {}):
                    raise CheckpointError(f"{info.path} is sharded over {n} ranks but lacks {name}")
                shard = paddle_load(info.path / name)
                for pname, accs in shard.get("accumulators", {}).items():
                    optimizer["accumulators"].setdefault(pname, {}).update(accs)
                for key, value in shard.get("extra", {}).items():
                    optimizer["extra"].setdefault(f"rank{r}:{key}", value)
        rng = None
        rpath = info.path / rng_file(self.rank)
        if rpath.is_file():
            with open(rpath, "rb") as f:
                rng = pickle.load(f)
        else:
            log.warning("checkpoint %s has no RNG state for rank %d (saved with world size %s); "
                        "python/numpy RNG start fresh", info.path, self.rank, info.manifest.get("world_size"))
        return LoadedCheckpoint(info=info, model_state={k: np.asarray(v) for k, v in model_state.items()},
                                optimizer=optimizer, rng=rng)


# ---------------------------------------------------------------------------
# snapshots (save_steps): loadable by ErnieForPretraining.from_pretrained
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
