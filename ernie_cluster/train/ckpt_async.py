"""Asynchronous periodic checkpoints (`train.async_checkpoint: auto | true | false`): training goes on while a
checkpoint is written.

At a periodic checkpoint's step boundary the main thread takes a consistent host copy of everything the
checkpoint holds: the engine's parameters and optimizer state (the Adam moments, the AMP loss scaling; numpy
copies, made between two steps), the trainer state (step, consumed samples, LR schedule) and the RNG state. It
hands the copy to a background thread and trains the next step; the thread writes the same files as a
synchronous save (`ckpt_write`: checksummed as they are written, fsynced, manifest last, renamed, `model_last`,
pruning). A checkpoint counts when its manifest is on disk, as before.

* One write in flight at most: every save, periodic or not, first waits for the previous write of its rank.
* Saves at a stop signal and at the end stay synchronous (the collective `CheckpointManager.save`), after that
  wait, so a stop still loses no step and the requeue protocol is unchanged.
* A write that failed in the background is logged by its thread at once, and reported again by the next save
  (or the stop, which also puts it in the exit record). The save after a failure is synchronous, so it either
  lands or raises as a synchronous save would; training goes on meanwhile.

The multi-rank protocol. Collectives (gloo or NCCL all-reduce, barrier) run on the main thread only: a collective
issued by a background thread could interleave with the training loop's own and deadlock or mix their data. So:

1. At a save's step boundary every rank first waits for its own previous write, polling: the ranks all-reduce
   "is my write still running" until none is, so no rank sits inside a collective while another finishes a
   long write (gloo gives up on a collective after about 30 s). Then one max all-reduce decides whether this
   save is asynchronous: a rank votes "synchronous" when its previous write failed, rank 0 also when host
   memory cannot hold the copy. All ranks take the same path.
2. In the background each rank creates ``.tmp.step_N`` (exist_ok: whichever rank comes first) and writes its
   ``rng_rank<r>.pkl`` under a temporary name, fsyncs and renames it: a rank's file is there whole or not at all.
   A rank whose write fails leaves ``.failed.rank<r>`` (the error) in the directory instead.
3. Rank 0 (the only one holding the model and optimizer copy: the state is replicated) writes the model,
   optimizer and trainer-state files, then polls the directory until every rank's RNG file is there (it gives
   up at a ``.failed.rank<r>`` marker or after `PEER_WAIT_S`), and only then writes the manifest and renames.
4. No stale files can join a manifest: rank 0 removes every ``.tmp.*`` directory before the ranks agree on
   the checkpoint to resume from (`clean_at_start`, a collective follows), a write removes only the
   temporary directories of older steps, and the manifest lists the expected files by name.

Memory: rank 0 holds one copy (about 12 bytes per fp32 parameter with Adam: 1.2 GB for ERNIE 1.0 base). Where the
engine's state is in host memory (`state_views`: the CPU), the copy goes into buffers kept from one asynchronous
save to the next (`HostBuffers`): no allocation and no page faults at the step boundary, so the loop waits for a
memory-speed copy only; they stay allocated for the run. Elsewhere (a GPU's state) each save copies into fresh
arrays, freed when the write ends. Its size is logged at start (an estimate from the parameter shapes) and at every
save (measured). `auto` writes synchronously, with a warning, whenever MemAvailable (/proc/meminfo) minus a margin
cannot hold what the copy still has to allocate; `true` refuses to start in that case (a clear error rather than
the OOM killer later) and falls back the same way if memory runs short later; `false` never copies.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before Python 3.11
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .ckpt_format import CheckpointError, rng_file
from .ckpt_write import CheckpointManager

log = logging.getLogger("ernie_cluster.train")

PEER_WAIT_S = 600.0                      # rank 0 waits this long for the other ranks' files of a save
MEM_AVAILABLE_ENV = "ERNIE_CLUSTER_TEST_MEM_AVAILABLE_MB"  # test hook: MemAvailable as if it were this
FAILED_PREFIX = ".failed.rank"


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


def meminfo(path: str = "/proc/meminfo") -> Dict[str, int]:
    """MemAvailable and MemTotal in bytes (empty where /proc/meminfo does not exist)."""
    out: Dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemAvailable", "MemTotal"):
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    override = os.environ.get(MEM_AVAILABLE_ENV)
    if override:
        out["MemAvailable"] = int(float(override) * 2 ** 20)
    return out


def memory_margin(total: int) -> int:
    """Host memory left to everything else while a copy is held: 10% of the machine, at least 1 GiB."""
    return max(1 << 30, total // 10)


def memory_check(nbytes: int) -> Tuple[bool, str]:
    """(a copy of `nbytes` fits, the figures in words)."""
    info = meminfo()
    if "MemAvailable" not in info:
        return True, "host memory unknown (no MemAvailable in /proc/meminfo)"
    available, margin = info["MemAvailable"], memory_margin(info.get("MemTotal", 0))
    words = (f"copy {nbytes / 2 ** 20:.0f} MB, MemAvailable {available / 2 ** 20:.0f} MB, "
             f"margin {margin / 2 ** 20:.0f} MB")
    return nbytes <= available - margin, words


def state_nbytes(*objs: Any) -> int:
    """Bytes of the numpy arrays in nested dicts/lists (an array shared by two names counted once)."""
    seen, total, stack = set(), 0, list(objs)
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "nbytes") and id(obj) not in seen:
            seen.add(id(obj))
            total += int(obj.nbytes)
    return total


def estimate_nbytes(engine) -> int:
    """A copy's size before one exists: fp32 parameters and two Adam moments (the engines' canonical names)."""
    shapes = engine.param_shapes()
    n = 0
    for name in getattr(engine, "canonical", shapes):
        count = 1
        for dim in shapes[name]:
            count *= int(dim)
        n += count
    return 3 * 4 * n


class HostBuffers:
    """Rank 0's host copy of a checkpoint's state, in buffers kept from one asynchronous save to the next.

    At most one write is in flight and every save first waits for it, so the buffers are free again when the next
    save copies into them. `copy(tree)` mirrors nested dicts, lists and tuples, copies each numpy array into the
    buffer kept for its place in the tree (an array under two names stays one buffer: tied weights), and keeps
    other leaves (numbers, strings, None) as they are. The same tree object handed over again (the engine's
    views while no variable got new memory) must hold the same arrays: the copy then skips the walk. A large copy
    is split over two threads (numpy releases the GIL while it copies): one core alone does not reach the memory
    bandwidth."""

    PARALLEL_BYTES = 64 << 20  # below this, handing half to the other thread gains nothing (measured)

    def __init__(self) -> None:
        self.kept: Any = None  # the last copy: its arrays are the buffers the next copy finds at the same places
        self._plan: Optional[Tuple[Any, List[Tuple[np.ndarray, np.ndarray]]]] = None  # (source tree, pairs)
        self._helper: Optional[ThreadPoolExecutor] = None
        self.nbytes = 0

    def copy(self, tree: Any) -> Any:
        if self._plan is not None and self._plan[0] is tree:  # the same views again: same arrays, same buffers
            self._copy(self._plan[1], self.nbytes)
            return self.kept
        pairs: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}  # id(source) -> (buffer, source)
        taken = set()  # id(buffer): two sources never share one, even where the last copy had an alias there
        ndarray = np.ndarray

        def walk(obj: Any, kept: Any) -> Any:
            if isinstance(obj, ndarray):
                pair = pairs.get(id(obj))
                if pair is None:
                    fits = (isinstance(kept, ndarray) and kept.shape == obj.shape and kept.dtype == obj.dtype
                            and id(kept) not in taken)
                    pair = pairs[id(obj)] = (kept if fits else np.empty(obj.shape, obj.dtype), obj)
                    taken.add(id(pair[0]))
                return pair[0]
            if isinstance(obj, dict):
                kept = kept if isinstance(kept, dict) else {}
                return {k: walk(v, kept.get(k)) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                kept = kept if isinstance(kept, (list, tuple)) and len(kept) == len(obj) else [None] * len(obj)
                return type(obj)(walk(v, k) for v, k in zip(obj, kept))
            return obj

        out = walk(tree, self.kept)
        self._plan = (tree, list(pairs.values()))
        self.kept, self.nbytes = out, sum(dst.nbytes for dst, _ in self._plan[1])
        self._copy(self._plan[1], self.nbytes)
        return out

    def _copy(self, pairs: List[Tuple[np.ndarray, np.ndarray]], total: int) -> None:
        if total < self.PARALLEL_BYTES:
            for dst, src in pairs:
                np.copyto(dst, src)
            return
        halves: Tuple[List, List] = ([], [])
        sizes = [0, 0]
        for pair in sorted(pairs, key=lambda p: -p[0].nbytes):  # greedy: the bigger arrays first
            i = 0 if sizes[0] <= sizes[1] else 1
            halves[i].append(pair)
            sizes[i] += pair[0].nbytes
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-copy")
        other = self._helper.submit(lambda: [np.copyto(dst, src) for dst, src in halves[1]])
        for dst, src in halves[0]:
            np.copyto(dst, src)
        other.result()


# ---------------------------------------------------------------------------
# the background write (no collectives)
# ---------------------------------------------------------------------------


def clean_at_start(manager: CheckpointManager) -> None:
    """Rank 0, before the ranks agree on a checkpoint: no temporary directory of an earlier attempt survives."""
    if manager.rank == 0:
        manager.clean_stale()


def wait_for_peers(tmp: Path, world_size: int, timeout: float = PEER_WAIT_S) -> None:
    """Rank 0: until every rank's RNG file is in `tmp` (CheckpointError at a failure marker or the timeout)."""
    deadline = time.monotonic() + timeout
    missing = list(range(1, world_size))
    delay = 0.005
    while True:
        missing = [r for r in missing if not (tmp / rng_file(r)).is_file()]
        if not missing:
            return
        failed = sorted(tmp.glob(FAILED_PREFIX + "*"))
        if failed:
            why = "; ".join(f"{p.name[len(FAILED_PREFIX):]}: {p.read_text(errors='replace').strip()}" for p in failed)
            raise CheckpointError(f"rank(s) failed to write their files of {tmp.name}: {why}")
        if time.monotonic() > deadline:
            raise CheckpointError(f"{tmp.name}: no files from rank(s) {missing} after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(0.2, delay * 2)


def write_snapshot(manager: CheckpointManager, snap: Dict[str, Any]) -> Path:
    """This rank's part of an asynchronous save of `snap` (see the module docstring); the final path."""
    step = snap["step"]
    tmp, final = manager.paths(step)
    t0 = time.perf_counter()
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        digests = {rng_file(manager.rank): manager.write_rng(tmp, snap["rng"])}
    except BaseException as exc:
        _mark_failed(tmp, manager.rank, exc)
        raise
    if manager.rank != 0:
        return final
    manager.clean_stale(before=step)
    digests.update(manager.write_rank0_files(step, tmp, snap["model"], snap["optimizer"], snap["trainer_state"]))
    wait_for_peers(tmp, manager.world_size)
    manager.finish(step, tmp, final, digests)
    log.info("checkpoint step %d saved to %s in %.2fs in the background", step, final, time.perf_counter() - t0)
    return final


def _mark_failed(tmp: Path, rank: int, exc: BaseException) -> None:
    try:
        (tmp / f"{FAILED_PREFIX}{rank:05d}").write_text(f"{type(exc).__name__}: {exc}\n")
    except OSError:
        pass  # rank 0 then waits until PEER_WAIT_S


class AsyncWriter:
    """One rank's background writes, one at a time, on one thread kept for the run (started at the first write;
    a pool thread is joined at interpreter exit, so a write in flight ends)."""

    def __init__(self, manager: CheckpointManager):
        self.manager = manager
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-write")
        self._future: Optional["Future[None]"] = None
        self._error: Optional[BaseException] = None
        self.step: Optional[int] = None
        self.seconds = 0.0  # how long the last write took, from its start on the background thread

    @property
    def pending(self) -> bool:
        """A write was submitted and not yet waited for (it may have ended already)."""
        return self._future is not None

    @property
    def in_flight(self) -> bool:
        return self._future is not None and not self._future.done()

    def submit(self, snap: Dict[str, Any]) -> None:
        if self._future is not None:
            raise RuntimeError("a checkpoint write is still in flight: wait() first")
        self.step, self._error = snap["step"], None
        self._future = self._pool.submit(self._run, snap)

    def _run(self, snap: Dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            write_snapshot(self.manager, snap)
            self.seconds = time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001 - reported by wait() on the main thread
            self._error = exc
            log.error("checkpoint step %d failed in the background and is not on disk:\n%s", snap["step"],
                      traceback.format_exc())

    def ended(self, timeout: Optional[float] = None) -> bool:
        """Whether the write in flight has ended, waiting up to `timeout` seconds (it stays pending: see wait)."""
        if self._future is not None:
            try:
                self._future.exception(timeout)
            except FutureTimeout:
                return False
        return True

    def wait(self) -> Optional[str]:
        """Until the write in flight ends; its error in words (None: none, or it succeeded)."""
        if self._future is None:
            return None
        self._future.result()
        self._future = None
        error, self._error = self._error, None
        return None if error is None else f"checkpoint step {self.step}: {type(error).__name__}: {error}"


# ---------------------------------------------------------------------------
# what the trainer calls
# ---------------------------------------------------------------------------


class CheckpointSaver:
    """The trainer's checkpoints: periodic ones asynchronous when the spec and host memory allow, the others
    synchronous; every save first waits for the write in flight. `failure`: the background failure the most
    recent wait found (for the exit record)."""

    def __init__(self, manager: CheckpointManager, mode: str, collective, estimate: Callable[[], int]):
        self.manager, self.mode, self.collective = manager, str(mode), collective
        self.rank = manager.rank
        self.writer = AsyncWriter(manager)
        self.buffers = HostBuffers()
        self.nbytes = 0  # the copy's size: estimated at start, measured at every asynchronous save
        self.failure: Optional[str] = None
        self._memory_short = False
        clean_at_start(manager)
        if self.mode != "false":
            self.nbytes = estimate() if self.rank == 0 else 0
            self._check_at_start()

    def _check_at_start(self) -> None:
        ok, words = memory_check(self.nbytes) if self.rank == 0 else (True, "")
        if self.rank == 0:
            log.info("asynchronous checkpoints (train.async_checkpoint: %s): rank 0 keeps a host copy of about "
                     "%.1f MB per periodic checkpoint while it is written (%s)", self.mode, self.nbytes / 2 ** 20,
                     words)
        if self.mode == "true":
            if self.collective.max_int(0 if ok else 1):
                raise CheckpointError(
                    "train.async_checkpoint: true, but host memory cannot hold the in-memory copy of a checkpoint "
                    f"on rank 0 ({words or 'see rank 0'}). Set train.async_checkpoint: auto (synchronous saves "
                    "when memory is short) or false, or free host memory.")
        elif not ok:
            self._note_memory(False, words)

    def _note_memory(self, ok: bool, words: str) -> None:
        if not ok and not self._memory_short:
            log.warning("host memory cannot hold the copy of an asynchronous checkpoint (%s): periodic checkpoints "
                        "are written synchronously until it can", words)
        elif ok and self._memory_short:
            log.info("host memory holds the copy again (%s): periodic checkpoints are asynchronous again", words)
        self._memory_short = not ok

    def wait(self) -> Optional[str]:
        """Until this rank's write in flight ends; a background failure is logged here again and kept in `failure`."""
        self.failure = self.writer.wait()
        if self.failure:
            log.error("%s failed in the background (the newest complete checkpoint is an older one)", self.failure)
        return self.failure

    def _wait_all(self) -> Optional[str]:
        """`wait`, polled, until no rank has a write in flight: a rank never sits in a collective while another
        finishes a long write, which would run into the process group's timeout (gloo: about 30 s)."""
        if self.mode != "false" and self.manager.world_size > 1:
            delay = 0.005
            while self.collective.max_int(1 if self.writer.in_flight else 0):
                time.sleep(delay)
                delay = min(0.5, delay * 2)
        return self.wait()

    def _async_agreed(self, failed: bool) -> bool:
        """One max all-reduce on the main thread: asynchronous only if no rank failed and rank 0 has the memory."""
        vote = 1 if failed else 0
        if self.rank == 0 and not failed and self.buffers.nbytes < self.nbytes:  # the copy still allocates
            ok, words = memory_check(self.nbytes - self.buffers.nbytes)
            self._note_memory(ok, words)
            vote = 0 if ok else 1
        return self.collective.max_int(vote) == 0

    def save(self, step: int, *, periodic: bool, model_state: Callable[[], Dict[str, Any]],
             optimizer_state: Callable[[], Dict[str, Any]], trainer_state: Dict[str, Any],
             rng_state: Dict[str, Any], state_views: Optional[Callable[[], Any]] = None) -> None:
        """Collective: every rank calls it at the same step boundary. `state_views`: the engine's (model,
        optimizer) state as views of its live host memory (or None where it has none), copied into kept
        buffers instead of calling `model_state` and `optimizer_state`."""
        t0 = time.perf_counter()
        if self.writer.in_flight:
            (log.info if not periodic else log.warning)(
                "checkpoint step %d: first waiting for the write of step %d in flight%s", step, self.writer.step,
                "" if not periodic else " (writes take longer than train.checkpoint_steps steps)")
        failed = self._wait_all()
        if periodic and self.mode != "false" and self._async_agreed(bool(failed)):
            snap: Dict[str, Any] = {"step": step, "rng": rng_state}
            if self.rank == 0:
                snap.update(self._host_copy(model_state, optimizer_state, state_views), trainer_state=trainer_state)
            self.writer.submit(snap)
            if self.rank == 0:
                log.info("checkpoint step %d: %.1f MB copied to host memory, the loop waited %.3fs; writing in the "
                         "background", step, self.nbytes / 2 ** 20, time.perf_counter() - t0)
            return
        if failed and periodic:
            log.info("checkpoint step %d is written synchronously after the failure", step)
        self.manager.save(step, model_state=model_state, optimizer_state=optimizer_state,
                          trainer_state=trainer_state, rng_state=rng_state)

    def _host_copy(self, model_state: Callable, optimizer_state: Callable,
                   state_views: Optional[Callable[[], Any]]) -> Dict[str, Any]:
        views = state_views() if state_views is not None else None
        if views is None:  # fresh arrays (a GPU's state comes to the host here), freed when the write ends
            model, optimizer = model_state(), optimizer_state()
            self.nbytes = state_nbytes(model, optimizer)
        else:
            kept = self.buffers.nbytes
            model, optimizer = self.buffers.copy(views)
            self.nbytes = self.buffers.nbytes
            if self.buffers.nbytes != kept:
                log.info("asynchronous checkpoints: rank 0 keeps %.1f MB of host buffers for the copy (for the run)",
                         self.nbytes / 2 ** 20)
        return {"model": model, "optimizer": optimizer}

    def close(self) -> Optional[str]:
        """At exit: the write in flight and the deletion of old checkpoints end first; the failure found (None when
        there was none)."""
        failure = self.wait() if self.writer.pending else self.failure
        self.manager.wait_pruned()
        return failure
