"""Sample mapping files in a shared cache directory: the build-once / wait-for-it protocol.

Used by :func:`data_tools.mapping.get_or_build_mapping`, which names the files
and says how to build the rows.  For a cache stem ``<name>`` in ``cache_dir``:

* the builder rank (:func:`build_into_cache`) reuses a readable ``<name>.npy``,
  else builds, writes ``<name>.npy`` and its description ``<name>.json``
  through temporary files and ``os.replace``; on any error it leaves
  ``<name>.failed`` (JSON with the traceback) and re-raises;
* the other ranks (:func:`wait_for_mapping`) wait for ``<name>.npy`` with a
  deadline, and stop early at a failure marker of their own run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from typing import Callable, Optional, Tuple

import numpy as np

from .errors import MappingBuildError

log = logging.getLogger("data_tools.mapping")  # the sample mapping's logger (these messages always had it)

BuildFn = Callable[[], Tuple[np.ndarray, dict]]
DescribeFn = Callable[[np.ndarray, dict, float], dict]


def _tmp_name(path: str) -> str:
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_npy_atomic(path: str, arr: np.ndarray) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_mapping(path: str) -> np.ndarray:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"bad sample mapping file {path}: shape {arr.shape}")
    return arr


def _cached_stats(path: str) -> dict:
    """Skip counts from the ``.json`` written next to a cached mapping ({} when missing or unreadable)."""
    try:
        with open(path[:-len(".npy")] + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        return {k: int(meta[k]) for k in ("skipped_short_docs", "skipped_long_docs")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_failure_marker(failed_path: str, run_id: Optional[str], error: BaseException) -> None:
    marker = {"run_id": run_id, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
              "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    try:
        _atomic_write_bytes(failed_path, json.dumps(marker, indent=1).encode())
    except OSError:
        log.exception("could not write failure marker %s", failed_path)


def cache_paths(cache_dir: str, name: str) -> Tuple[str, str, str]:
    """``(<name>.npy, <name>.json, <name>.failed)`` in ``cache_dir``."""
    base = os.path.join(cache_dir, name)
    return base + ".npy", base + ".json", base + ".failed"


def build_into_cache(cache_dir: str, name: str, build: BuildFn, describe: DescribeFn, *, split_name: str,
                     where: str, run_id: Optional[str]) -> Tuple[np.ndarray, dict]:
    """Builder side for the mapping ``<cache_dir>/<name>.npy``.

    ``describe(rows, stats, build_s)`` gives the ``.json`` written next to it.
    Returns ``(rows, info)`` like :func:`data_tools.mapping.get_or_build_mapping`.
    """
    path, meta_path, failed_path = cache_paths(cache_dir, name)
    os.makedirs(cache_dir, exist_ok=True)
    try:
        os.unlink(failed_path)
    except FileNotFoundError:
        pass
    if os.path.exists(path):
        try:
            rows = _load_mapping(path)
            return rows, {"path": path, "cached": True, **_cached_stats(path)}
        except Exception as e:  # corrupt / foreign file: rebuild it
            log.warning("ignoring unreadable sample mapping %s (%s); rebuilding", path, e)
    try:
        t0 = time.time()
        log.info("building sample mapping for split %r: %s -> %s", split_name, where, path)
        rows, stats = build()
        build_s = time.time() - t0
        _save_npy_atomic(path, rows)
        _atomic_write_bytes(meta_path, json.dumps(describe(rows, stats, build_s), indent=1).encode())
        log.info("sample mapping for %r: %d samples/epoch in %.2fs", split_name, rows.shape[0], build_s)
        stats.update(path=path, cached=False, build_s=build_s)
        return rows, stats
    except BaseException as e:
        _write_failure_marker(failed_path, run_id, e)
        raise


def _fresh_failure(failed_path: str, run_id: Optional[str], started: float) -> Optional[dict]:
    """The failure marker when it belongs to this run (same ``run_id``, or, without one, written after
    ``started``), else None."""
    try:
        with open(failed_path, encoding="utf-8") as f:
            marker = json.load(f)
        fresh = (marker.get("run_id") == run_id) if run_id is not None else \
            (os.path.getmtime(failed_path) >= started - 2.0)
    except (OSError, ValueError):
        return None
    return marker if fresh else None


def wait_for_mapping(cache_dir: str, name: str, *, timeout_s: float, poll_s: float, run_id: Optional[str]
                     ) -> Tuple[np.ndarray, dict]:
    """Waiter side: the rows once the builder rank wrote ``<cache_dir>/<name>.npy``.

    Raises :class:`MappingBuildError` when a failure marker of this run appears
    and ``TimeoutError`` after ``timeout_s``.
    """
    path, _, failed_path = cache_paths(cache_dir, name)
    started = time.time()
    deadline = time.monotonic() + float(timeout_s)
    next_log = time.monotonic() + 30.0
    while True:
        if os.path.exists(path):
            try:
                return _load_mapping(path), {"path": path, "cached": True, **_cached_stats(path)}
            except (ValueError, OSError, EOFError):
                pass  # should not happen with os.replace, but never trust a shared FS blindly
        if os.path.exists(failed_path):
            marker = _fresh_failure(failed_path, run_id, started)
            if marker is not None:
                raise MappingBuildError(
                    f"the builder rank failed to build the sample mapping {path} "
                    f"({marker.get('host')}:{marker.get('pid')}): {marker.get('error')}")
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(
                f"waited {timeout_s:.0f}s for the sample mapping {path} to be written by the builder rank "
                f"(is_builder=True); check that rank's log, that {cache_dir} is on a shared filesystem, "
                f"or raise the timeout")
        if now >= next_log:
            log.info("still waiting for sample mapping %s (%.0fs left)", path, deadline - now)
            next_log = now + 30.0
        time.sleep(min(poll_s, max(0.01, deadline - now)))


__all__ = ["cache_paths", "build_into_cache", "wait_for_mapping"]
