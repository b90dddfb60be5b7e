"""Reading checkpoints: list the step directories, verify one against its manifest, find the newest
complete compatible one, load it.

A reader trusts a checkpoint only when its manifest verifies (every file present, same size and
checksum: `ckpt_io`), scanning newest first and skipping damaged ones with a warning. See ``checkpoint.py``
for the layout.

Loading reads every byte once (`ckpt_io.read_pickle`): the files are checksummed while they are unpickled,
one after the other (in parallel they competed for the memory bandwidth and ran slower), and compared with the manifest at the end. `find_latest(...,
load_rank=r)` uses that load as its full verification, so a resume reads the chosen checkpoint once, not
once to hash it and again to load it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .ckpt_format import MANIFEST_FILE, MODEL_FILE, OPT_FILE, OPT_FORMAT, STATE_FILE, STEP_RE, rng_file
from .ckpt_format import CheckpointError, IncompatibleCheckpoint, json_default
from .ckpt_io import DamagedFile, data_problem, file_problem, mismatch, read_pickle

log = logging.getLogger("ernie_cluster.train")


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    manifest: Dict[str, Any] = field(default_factory=dict)
    trainer_state: Dict[str, Any] = field(default_factory=dict)
    # find_latest(load_rank=r): rank r's state, read while verifying; load_checkpoint hands it over once
    loaded: Optional["LoadedCheckpoint"] = field(default=None, repr=False, compare=False)


@dataclass
class LoadedCheckpoint:
    info: CheckpointInfo
    model_state: Dict[str, np.ndarray]
    optimizer: Dict[str, Any]
    rng: Optional[Dict[str, Any]]
    rank: int = 0

    @property
    def step(self) -> int:
        return self.info.step

    @property
    def trainer_state(self) -> Dict[str, Any]:
        return self.info.trainer_state


def paddle_load(path: Path) -> Any:
    import paddle

    return paddle.load(str(path), return_numpy=True)


def list_step_dirs(ckpt_dir: Path) -> List[Tuple[int, Path]]:
    out = []
    try:
        with os.scandir(ckpt_dir) as entries:
            for entry in entries:
                m = STEP_RE.match(entry.name)
                if m and entry.is_dir(follow_symlinks=False):  # a symlink named step_N is not a checkpoint
                    out.append((int(m.group(1)), Path(entry.path)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(out, reverse=True)


# ---------------------------------------------------------------------------
# manifest verification
# ---------------------------------------------------------------------------


def _read_manifest(path: Path) -> Tuple[Optional[Dict[str, Any]], str]:
    """(manifest, "") or (None, why it cannot be trusted): readable, lists files, lists the required ones."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no MANIFEST.json (the save did not finish)"
    except (OSError, ValueError) as exc:
        return None, f"unreadable MANIFEST.json: {exc}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None, "MANIFEST.json lists no files"
    for required in (MODEL_FILE, OPT_FILE, STATE_FILE, rng_file(0)):
        if required not in files:
            return None, f"MANIFEST.json does not list {required}"
    return manifest, ""


def _check_files(path: Path, files: Dict[str, Any], *, full: bool) -> str:
    """"" when every listed file has its size (and, with `full`, its checksum), else the first problem."""
    for name, meta in files.items():
        try:
            size = (path / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        reason = mismatch(name, size, meta)
        if reason:
            return reason
    if full:
        for name, meta in files.items():
            problem = file_problem(path / name, meta)
            if problem:
                return problem
    return ""


def verify_checkpoint(path: Path, *, full: bool = True) -> Tuple[bool, str, Optional[CheckpointInfo]]:
    """Check a checkpoint directory against its manifest. Returns (ok, reason, info)."""
    m = STEP_RE.match(path.name)
    if not m:
        return False, f"{path.name} is not a step_<N> directory", None
    manifest, reason = _read_manifest(path)
    if manifest is None:
        return False, reason, None
    reason = _check_files(path, manifest["files"], full=full)
    if reason:
        return False, reason, None
    if int(manifest.get("step", -1)) != int(m.group(1)):
        return False, f"manifest step {manifest.get('step')} does not match the directory name", None
    try:  # read here in any case, so checked here in any case (a few hundred bytes)
        raw = (path / STATE_FILE).read_bytes()
    except OSError as exc:
        return False, f"unreadable {STATE_FILE}: {exc}", None
    problem = data_problem(STATE_FILE, raw, manifest["files"][STATE_FILE])
    if problem:
        return False, problem, None
    try:
        state = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        return False, f"unreadable {STATE_FILE}: {exc}", None
    return True, "ok", CheckpointInfo(path=path, step=int(m.group(1)), manifest=manifest, trainer_state=state)


# ---------------------------------------------------------------------------
# the newest complete, compatible checkpoint
# ---------------------------------------------------------------------------


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


def _compat_diffs(info: CheckpointInfo, compat_key: Dict[str, Any]) -> List[str]:
    # Only the fields the caller names: the converter knows the spec, the trainer the corpus too.
    saved = {k: v for k, v in info.trainer_state.get("compat_key", {}).items() if k in compat_key}
    saved_norm = json.loads(json.dumps(saved, sort_keys=True))
    cur_norm = json.loads(json.dumps(compat_key, sort_keys=True, default=json_default))
    return compat_differences(saved_norm, cur_norm)


def _refuse_incompatible(info: CheckpointInfo, compat_key: Dict[str, Any]) -> None:
    diffs = _compat_diffs(info, compat_key)
    if diffs:
        raise IncompatibleCheckpoint(
            f"checkpoint {info.path} was written by an incompatible spec; these fields differ:\n  "
            + "\n  ".join(diffs)
            + "\nResuming would silently change the data order or the model. Fix: either use a new "
            "output_dir for this spec (a fresh run), or put the checkpoint's values back into the spec "
            "to continue this run.")


def _load_into(info: CheckpointInfo, rank: int, compat_key: Optional[Dict[str, Any]]) -> Tuple[bool, str]:
    """The full check of `info` by loading rank `rank`'s state into it; (intact, why not)."""
    if compat_key is not None and _compat_diffs(info, compat_key):
        # refused by the caller, but only when intact: a damaged checkpoint is skipped whatever wrote it
        reason = _check_files(info.path, info.manifest["files"], full=True)
        return not reason, reason
    try:
        info.loaded = load_checkpoint(info, rank)
    except DamagedFile as exc:
        return False, str(exc)
    return True, "ok"


PREFETCH_BYTES = 1 << 20  # the files read whole (`ckpt_io.WHOLE_FILE_BYTES`); larger ones are streamed


def prefetch(path: Path, names: List[str]) -> None:
    """Start reading a checkpoint's small files from disk at once (POSIX_FADV_WILLNEED): read one after the other,
    each would wait for the disk in turn. Nothing to do when its manifest (written last) is in the page cache: the
    checkpoint was written or read here a moment ago. Larger files are left to the kernel's readahead while they
    are streamed (asking for a few MB at once blocked longer than reading them measured here)."""
    if _in_page_cache(path / MANIFEST_FILE):
        return
    for name in names:
        try:
            fd = os.open(path / name, os.O_RDONLY)
        except OSError:
            continue  # verification says what is missing
        try:
            if os.fstat(fd).st_size <= PREFETCH_BYTES:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):  # no fadvise here: only slower
            pass
        finally:
            os.close(fd)


def _in_page_cache(path: Path) -> bool:
    """Whether the first byte of `path` can be read without waiting for the disk (RWF_NOWAIT; False where unknown)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT) == 1
    except (OSError, AttributeError, ValueError):  # EAGAIN: not cached; no preadv/RWF_NOWAIT here: unknown
        return False
    finally:
        os.close(fd)


def find_latest(ckpt_dir: Path, compat_key: Optional[Dict[str, Any]] = None, *, full: bool = True,
                load_rank: Optional[int] = None) -> Optional[CheckpointInfo]:
    """Newest checkpoint whose manifest verifies; damaged ones are skipped with a warning.

    With `load_rank`, each candidate's full check is its load (every byte read once): the chosen one comes
    back with that rank's state in `info.loaded`. Raises IncompatibleCheckpoint when the newest complete
    checkpoint was written by a spec with a different compat key (global batch, sequence length, model
    shape, data, seed).
    """
    for step, path in list_step_dirs(ckpt_dir):
        if load_rank is not None:
            prefetch(path, [MANIFEST_FILE, STATE_FILE, rng_file(load_rank), MODEL_FILE, OPT_FILE])
        ok, reason, info = verify_checkpoint(path, full=full and load_rank is None)
        if ok and load_rank is not None:
            ok, reason = _load_into(info, load_rank, compat_key)
        if not ok:
            log.warning("checkpoint %s is damaged and skipped: %s", path, reason)
            continue
        assert info is not None
        if compat_key is not None:
            _refuse_incompatible(info, compat_key)
        return info
    return None


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def load_checkpoint(info: CheckpointInfo, rank: int, *, verify: bool = True) -> LoadedCheckpoint:
    """The model state, the (merged) optimizer state and `rank`'s RNG state of a checkpoint, each file read once
    and, with `verify`, checksummed on the way and checked against the manifest (DamagedFile when it differs)."""
    if info.loaded is not None and info.loaded.rank == rank:
        loaded, info.loaded = info.loaded, None  # handed over once: the caller owns the arrays now
        return loaded
    files = info.manifest.get("files", {}) if verify else {}
    optimizer = read_pickle(info.path / OPT_FILE, files.get(OPT_FILE) if verify else None)
    model_state = read_pickle(info.path / MODEL_FILE, files.get(MODEL_FILE) if verify else None)
    if not isinstance(optimizer, dict) or optimizer.get("format") != OPT_FORMAT:
        raise CheckpointError(f"{info.path / OPT_FILE} is not an {OPT_FORMAT} optimizer state")
    rng = None
    rpath = info.path / rng_file(rank)
    if rpath.is_file():
        rng = read_pickle(rpath, files.get(rng_file(rank)) if verify else None)
    else:  # a rank the saving attempt did not have (an elastic resume on more nodes): the caller seeds it
        saved = info.manifest.get("world_size")
        (log.info if isinstance(saved, int) and rank >= saved else log.warning)(
            "checkpoint %s has no RNG state for rank %d (saved with world size %s); python/numpy RNG are "
            "seeded from (seed, rank)", info.path, rank, saved)
    return LoadedCheckpoint(info=info, model_state={k: np.asarray(v) for k, v in model_state.items()},
                            optimizer=optimizer, rng=rng, rank=rank)
