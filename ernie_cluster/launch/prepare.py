"""Data preparation before any trainer starts: node 0 prepares, the other nodes wait for it.

Node 0 (`run_preparation`):
  1. tokenizes `data.raw_corpus` into `<input_prefix>_ids.npy/_idx.npz` when those are missing
     (`python -m data_tools.create_pretraining_data` as a subprocess, written under a temporary
     prefix and renamed into place, so a killed attempt never leaves half a corpus behind; a stop
     signal ends the tokenizer at once, so the job requeues within Slurm's grace time);
  2. builds the sample index maps into `RUN/data_cache` (`data_tools.dataset.build_pretraining_datasets`
     with `is_builder=True`), so the trainers only read them; documents that give no sample are
     logged as a WARNING per split and recorded in `data_cache/data_report.json` (for `status`);
  3. writes `data_cache/READY.<attempt>` or `data_cache/FAILED.<attempt>` (with the error), and
     refreshes `data_cache/PREPARING.<attempt>` every few seconds while it works.
The other nodes (`wait_for_data`) wait for READY, fail at once on FAILED, and give up when node 0's
heartbeat stops, when node 0 never starts preparing, or at an overall deadline: never poll forever.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..envvars import child_pythonpath
from ..rundir import RunDir, write_atomic
from ..spec import JobSpec

HEARTBEAT_S = 5.0


class DataPrepError(RuntimeError):
    """Data preparation failed (on node 0) or could not be waited for (other nodes)."""


def marker(run: RunDir, kind: str, attempt: str) -> Path:
    return run.data_cache / f"{kind}.{attempt}"


def available_cpus(env: Optional[Dict[str, str]] = None) -> int:
    env = env if env is not None else dict(os.environ)
    value = env.get("SLURM_CPUS_PER_TASK", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def corpus_files(prefix: str) -> List[Path]:
    return [Path(f"{prefix}_ids.npy"), Path(f"{prefix}_idx.npz")]


def tokenize_command(spec: JobSpec, output_prefix: str, *, python: Optional[str] = None, workers: int = 1) -> List[str]:
    d = spec.data
    if not d.raw_corpus:
        raise DataPrepError("data.raw_corpus is not set: nothing to tokenize")
    if not d.vocab_file:
        raise DataPrepError("tokenizing data.raw_corpus needs data.vocab_file")
    cmd = [python or sys.executable, "-m", "data_tools.create_pretraining_data",
           "--input", str(d.raw_corpus), "--vocab-file", str(d.vocab_file),
           "--output-prefix", str(output_prefix)]
    if d.chinese:
        cmd.append("--chinese")
        if d.whole_word_segment:
            cmd.append("--cn-whole-word-segment")
    split_sentences = d.split_sentences  # unset: the tokenizer's default (auto: jsonl text)
    if split_sentences is not None:
        cmd += ["--split-sentences", str(split_sentences)]
    cmd += ["--workers", str(max(1, workers))]
    return cmd


def tokenize_corpus(spec: JobSpec, *, log: Callable[[str], None] = print, python: Optional[str] = None,
                    workers: Optional[int] = None, env: Optional[Dict[str, str]] = None,
                    should_abort: Callable[[], Optional[str]] = lambda: None, poll_s: float = 0.2) -> bool:
    """Tokenize the raw corpus when the prefix files are missing; True when it ran.

    Polls `should_abort` while the tokenizer runs: a stop signal (preemption, time limit) ends it at
    once (its whole process group), removes the partial output and raises DataPrepError, so the job
    can requeue inside Slurm's grace time instead of being killed mid-way.
    """
    prefix = spec.data.input_prefix
    if not spec.data.raw_corpus or all(p.exists() for p in corpus_files(prefix)):
        return False
    final = Path(prefix)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = final.parent / f".tmp-{socket.gethostname()}-{os.getpid()}-{final.name}"
    tmp_files = corpus_files(str(tmp_prefix))
    cmd = tokenize_command(spec, str(tmp_prefix), python=python, workers=workers or available_cpus(env))
    log(f"tokenizing {spec.data.raw_corpus}: {' '.join(cmd)}")
    run_env = dict(env if env is not None else os.environ)
    run_env["PYTHONPATH"] = child_pythonpath(run_env)  # the checkout first only when running from one
    out_path = final.parent / f"{tmp_prefix.name}.log"
    try:
        with open(out_path, "w+", encoding="utf-8", errors="replace") as out:
            proc = subprocess.Popen(cmd, env=run_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            reason = None
            while proc.poll() is None:
                reason = should_abort()
                if reason:
                    _stop_group(proc)
                    break
                time.sleep(poll_s)
            out.seek(0)
            lines = out.read().splitlines()
        for line in lines[-40:]:
            log(f"  | {line}")
        if reason:
            raise DataPrepError(f"tokenizing stopped ({reason}); the partial output was removed")
        if proc.returncode != 0 or not all(p.exists() for p in tmp_files):
            tail = "\n".join(lines[-10:])
            raise DataPrepError(f"tokenizing {spec.data.raw_corpus} failed (exit {proc.returncode}):\n{tail}")
        # ids first, idx last: the pair counts as present only when both exist.
        for src, dst in zip(tmp_files, corpus_files(prefix)):
            os.replace(src, dst)
    finally:
        for p in (*tmp_files, out_path):
            p.unlink(missing_ok=True)
    return True


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the tokenizer's process group (its worker pool too), SIGKILL what outlives the grace."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def build_index_maps(spec: JobSpec, run: RunDir, *, log: Callable[[str], None] = print) -> Any:
    """Build (or find) the train/valid/test sample index maps in RUN/data_cache.

    Goes through the trainer's own adapter (`ernie_cluster.train.data.open_datasets`, numpy only)
    so the maps are built with exactly the parameters the trainers will look them up with.
    """
    try:
        from ..train.data import open_datasets
    except ImportError as exc:
        raise DataPrepError(f"cannot import the data adapter ({exc}); is the project installed on the nodes?") from None
    run.data_cache.mkdir(parents=True, exist_ok=True)
    log(f"building sample index maps in {run.data_cache}")
    try:
        datasets = open_datasets(spec, run.data_cache, is_builder=True, warn=lambda line: log(f"WARNING: {line}"))
    except DataPrepError:
        raise
    except Exception as exc:  # DataSetupError, data_tools' DataError (a ValueError), OSError...
        raise DataPrepError(f"building the sample index maps failed: {exc}") from exc
    sizes = {name: (len(ds) if ds is not None and hasattr(ds, "__len__") else None) for name, ds in dict(datasets).items()}
    log(f"sample index maps ready: {sizes}")
    train_samples = sizes.get("train")
    if train_samples:
        epochs = spec.train.max_steps * spec.global_batch_size / train_samples
        log(f"max_steps={spec.train.max_steps} x global batch {spec.global_batch_size} reads the training split "
            f"{epochs:.2f} times{' (WARNING: a small corpus for this many steps: the model will memorise it)' if epochs > 20 else ''}")
    return datasets


def prepare_data(spec: JobSpec, run: RunDir, *, log: Callable[[str], None] = print,
                 should_abort: Callable[[], Optional[str]] = lambda: None) -> None:
    """Everything the trainers need on disk before they start (node 0 only)."""
    tokenize_corpus(spec, log=log, should_abort=should_abort)
    missing = [] if Path(spec.data.input_prefix).is_dir() else \
        [str(p) for p in corpus_files(spec.data.input_prefix) if not p.exists()]
    if missing:
        raise DataPrepError(f"{', '.join(missing)} missing; set data.raw_corpus or run data_tools.create_pretraining_data")
    reason = should_abort()
    if reason:
        raise DataPrepError(f"stopped before building the sample index maps ({reason})")
    build_index_maps(spec, run, log=log)


class _Heartbeat:
    def __init__(self, path: Path, interval: float = HEARTBEAT_S):
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="data-prep-heartbeat", daemon=True)
        self._beats = 0

    def _beat(self) -> None:
        self._beats += 1
        write_atomic(self.path, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                            "beat": self._beats, "time": time.time()}) + "\n")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except OSError:
                pass

    def __enter__(self) -> "_Heartbeat":
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def run_preparation(spec: JobSpec, run: RunDir, attempt: str, *,
                    prepare: Callable[..., Any] = prepare_data, log: Callable[[str], None] = print,
                    heartbeat_s: float = HEARTBEAT_S,
                    should_abort: Callable[[], Optional[str]] = lambda: None) -> None:
    """Node 0: prepare, then publish READY.<attempt> or FAILED.<attempt>; failures raise DataPrepError.

    `prepare(spec, run, log=..., should_abort=...)` must return soon after `should_abort()` gives a reason."""
    run.data_cache.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with _Heartbeat(marker(run, "PREPARING", attempt), heartbeat_s):
        try:
            prepare(spec, run, log=log, should_abort=should_abort)
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
            write_atomic(marker(run, "FAILED", attempt), json.dumps({
                "error": message, "traceback": traceback.format_exc(limit=20), "host": socket.gethostname(),
                "time": time.time()}, indent=1) + "\n")
            if isinstance(exc, DataPrepError) or not isinstance(exc, Exception):
                raise
            raise DataPrepError(message) from exc
        write_atomic(marker(run, "READY", attempt), json.dumps({
            "host": socket.gethostname(), "seconds": round(time.time() - started, 3), "time": time.time()}) + "\n")
    log(f"data ready ({time.time() - started:.1f}s)")


def wait_for_data(run: RunDir, attempt: str, *, timeout_s: float = 6 * 3600, start_grace_s: float = 600,
                  stale_s: float = 120, poll_s: float = 1.0,
                  should_abort: Callable[[], Optional[str]] = lambda: None,
                  log: Callable[[str], None] = print) -> None:
    """Other nodes: return once node 0 published READY.<attempt>; raise DataPrepError otherwise.

    Staleness is measured by this node's clock from the last change of node 0's heartbeat file,
    so clock skew between nodes does not matter.
    """
    ready, failed, preparing = (marker(run, k, attempt) for k in ("READY", "FAILED", "PREPARING"))
    start = time.monotonic()
    last_seen: Optional[str] = None
    last_change = start
    announced = False
    while True:
        if ready.exists():
            return
        if failed.exists():
            try:
                error = json.loads(failed.read_text()).get("error", "")
            except (OSError, ValueError):
                error = "(unreadable)"
            raise DataPrepError(f"node 0 failed to prepare the data: {error}")
        reason = should_abort()
        if reason:
            raise DataPrepError(f"stopped while waiting for the data: {reason}")
        now = time.monotonic()
        try:
            beat: Optional[str] = preparing.read_text()
        except OSError:
            beat = None
        if beat is not None and beat != last_seen:
            last_seen, last_change = beat, now
            if not announced:
                log(f"waiting for node 0 to prepare the data ({preparing.name})")
                announced = True
        if last_seen is None and now - start > start_grace_s:
            raise DataPrepError(f"node 0 did not start preparing the data within {start_grace_s:.0f}s "
                                f"(no {preparing} and no READY/FAILED marker); see node 0's log")
        if last_seen is not None and now - last_change > stale_s:
            raise DataPrepError(f"node 0 stopped preparing the data: its heartbeat {preparing} has not changed "
                                f"for {stale_s:.0f}s")
        if now - start > timeout_s:
            raise DataPrepError(f"the data was not ready after {timeout_s:.0f}s")
        time.sleep(poll_s)
