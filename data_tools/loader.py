"""Fixed-shape batches and a resumable, order-preserving multi-process loader (numpy only).

Index arithmetic (global batch ``gbs = micro * accumulate * dp_size``):
training step ``s`` covers global sample indices ``[s*gbs, (s+1)*gbs)``; data
parallel rank ``r`` takes ``s*gbs + r*micro*accumulate + [0, micro*accumulate)``
split into ``accumulate`` micro-batches.  Starting at ``start_step`` is pure
arithmetic (nothing is replayed), and because every sample is deterministic
in its global index, a loader started at step k yields exactly what an
uninterrupted loader yields from step k, whatever ``num_workers`` is.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

Batch = Dict[str, np.ndarray]

_POS_CACHE: Dict[Tuple[int, int], np.ndarray] = {}


def collate(samples: Sequence[Dict[str, Any]], max_seq_len: int, max_predictions_per_seq: int,
            pad_id: int = 0) -> Batch:
    """Stack samples into the static-graph feed (all shapes fixed by B, L, P).

    ============================  ========  ===========================================
    key                           dtype     shape / meaning
    ============================  ========  ===========================================
    ``input_ids``                 int64     [B, L], padded with ``pad_id``
    ``token_type_ids``            int64     [B, L]
    ``position_ids``              int64     [B, L], 0..L-1
    ``attention_mask``            float32   [B, 1, 1, L], 0 for tokens, -1e4 for padding
    ``masked_positions``          int64     [B*P], ``i*L + pos``; unused slots ``i*L``
    ``masked_lm_labels``          int64     [B*P, 1], -1 in unused slots
    ``masked_lm_weights``         float32   [B*P], 1 for real predictions, else 0
    ``next_sentence_labels``      int64     [B, 1], 1 = segments swapped
    ============================  ========  ===========================================
    """
    b = len(samples)
    L, P = int(max_seq_len), int(max_predictions_per_seq)
    input_ids = np.full((b, L), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((b, L), dtype=np.int64)
    key = (b, L)
    pos = _POS_CACHE.get(key)
    if pos is None:
        pos = np.ascontiguousarray(np.broadcast_to(np.arange(L, dtype=np.int64), (b, L)))
        pos.setflags(write=False)
        if len(_POS_CACHE) < 16:
            _POS_CACHE[key] = pos
    attention_mask = np.full((b, 1, 1, L), -1e4, dtype=np.float32)
    masked_positions = np.repeat(np.arange(b, dtype=np.int64) * L, P)
    masked_lm_labels = np.full((b * P, 1), -1, dtype=np.int64)
    masked_lm_weights = np.zeros(b * P, dtype=np.float32)
    nsl = np.zeros((b, 1), dtype=np.int64)
    for i, s in enumerate(samples):
        ids = s["input_ids"]
        t = ids.shape[0]
        if t > L:
            raise ValueError(f"sample {i} has {t} tokens > max_seq_len {L}")
        input_ids[i, :t] = ids
        token_type_ids[i, :t] = s["token_type_ids"]
        attention_mask[i, 0, 0, :t] = 0.0
        mp_ = s["masked_positions"]
        k = mp_.shape[0]
        if k > P:
            raise ValueError(f"sample {i} has {k} masked positions > max_predictions_per_seq {P}")
        o = i * P
        masked_positions[o:o + k] = mp_ + i * L
        masked_lm_labels[o:o + k, 0] = s["masked_lm_labels"]
        masked_lm_weights[o:o + k] = 1.0
        nsl[i, 0] = s["next_sentence_label"]
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "position_ids": pos.copy(),
            "attention_mask": attention_mask, "masked_positions": masked_positions,
            "masked_lm_labels": masked_lm_labels, "masked_lm_weights": masked_lm_weights,
            "next_sentence_labels": nsl}


def _batch_for(dataset, indices: range) -> Batch:
    return collate([dataset[i] for i in indices], dataset.max_seq_len, dataset.max_predictions_per_seq,
                   dataset.pad_id)


def _parent_watchdog(parent_pid: int) -> None:
    """Exit the worker when its parent is gone (even if killed with SIGKILL)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(dataset, plan: Tuple[int, int, int, int, Optional[int]], worker_id: int, num_workers: int,
                 out_q, stop_event, parent_pid: int) -> None:
    """Produce micro-batches j = worker_id, worker_id + W, ... into out_q (bounded)."""
    threading.Thread(target=_parent_watchdog, args=(parent_pid,), daemon=True).start()
    micro, acc, gbs, rank_off, start_step, end_step = plan[0], plan[1], plan[2], plan[3], plan[4], plan[5]

    def put(item) -> bool:
        while True:
            try:
                out_q.put(item, timeout=0.2)
                return True
            except queue.Full:
                if stop_event.is_set():
                    return False

    j = worker_id
    try:
        while not stop_event.is_set():
            step = start_step + j // acc
            if end_step is not None and step >= end_step:
                break
            first = step * gbs + rank_off + (j % acc) * micro
            batch = _batch_for(dataset, range(first, first + micro))
            if not put((j, batch)):
                break
            j += num_workers
    except BaseException:
        put((-1, traceback.format_exc()))
    if stop_event.is_set():
        out_q.cancel_join_thread()  # the consumer is gone: do not wait to flush unread batches
    # otherwise the queue's feeder thread flushes what is left before the process exits


class PretrainingBatches:
    """Iterator of ``(step, [micro-batch dicts])`` for one data-parallel rank.

    ``dataset`` needs ``__getitem__`` for any index >= 0 and ``max_seq_len``,
    ``max_predictions_per_seq``, ``pad_id`` attributes (``ErnieDataset`` has them).
    ``num_workers=0`` builds batches in-process; otherwise worker processes
    each produce every W-th micro-batch into a queue bounded by ``prefetch``
    and the consumer reads them round-robin, so the order is exactly the
    single-process order.  ``end_step`` (exclusive) stops the iteration;
    without it the loader runs forever (epochs wrap).  Use ``close()`` or a
    ``with`` block; workers are daemons and also exit when the parent dies.
    """

    def __init__(self, dataset, micro_batch_size: int, accumulate_steps: int = 1, dp_rank: int = 0,
                 dp_size: int = 1, start_step: int = 0, num_workers: int = 0, prefetch: int = 2,
                 end_step: Optional[int] = None, mp_context: Optional[str] = None, timeout_s: float = 600.0):
        if micro_batch_size < 1 or accumulate_steps < 1 or dp_size < 1:
            raise ValueError("micro_batch_size, accumulate_steps and dp_size must be >= 1")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
        if start_step < 0 or num_workers < 0 or prefetch < 1:
            raise ValueError("start_step >= 0, num_workers >= 0 and prefetch >= 1 required")
        self.dataset = dataset
        self.micro = int(micro_batch_size)
        self.acc = int(accumulate_steps)
        self.dp_rank = int(dp_rank)
        self.dp_size = int(dp_size)
        self.global_batch_size = self.micro * self.acc * self.dp_size
        self.start_step = int(start_step)
        self.end_step = None if end_step is None else int(end_step)
        self.num_workers = int(num_workers)
        self.prefetch = int(prefetch)
        self.timeout_s = float(timeout_s)
        self._step = self.start_step
        self._j = 0  # micro-batch counter relative to start_step
        self._closed = False
        self._workers: List[Any] = []
        self._queues: List[Any] = []
        self._stop = None
        if self.num_workers > 0:
            try:
                self._start_workers(mp_context)
            except BaseException:
                PretrainingBatches._shutdown(self._workers, self._queues, self._stop)
                raise
        self._finalizer = weakref.finalize(self, PretrainingBatches._shutdown, self._workers, self._queues,
                                           self._stop)

    # -- index arithmetic -------------------------------------------------------
    def sample_range(self, step: int, micro_index: int) -> range:
        """Global sample indices of micro-batch ``micro_index`` of ``step`` on this rank."""
        first = step * self.global_batch_size + self.dp_rank * self.micro * self.acc + micro_index * self.micro
        return range(first, first + self.micro)

    def samples_for_step(self, step: int) -> List[range]:
        return [self.sample_range(step, m) for m in range(self.acc)]

    # -- workers -----------------------------------------------------------------
    def _start_workers(self, mp_context: Optional[str]) -> None:
        if mp_context is None:
            mp_context = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(mp_context)
        self._stop = ctx.Event()
        plan = (self.micro, self.acc, self.global_batch_size, self.dp_rank * self.micro * self.acc,
                self.start_step, self.end_step)
        for w in range(self.num_workers):
            q = ctx.Queue(maxsize=self.prefetch)
            p = ctx.Process(target=_worker_main, name=f"ernie-data-{w}",
                            args=(self.dataset, plan, w, self.num_workers, q, self._stop, os.getpid()),
                            daemon=True)
            p.start()
            # The consumer never writes: drop its copy of the write end, so that a worker that dies in the
            # middle of a message gives EOF here instead of a read that waits forever.
            writer = getattr(q, "_writer", None)
            if writer is not None:
                writer.close()
            self._workers.append(p)
            self._queues.append(q)

    def _get(self, j: int) -> Batch:
        w = j % self.num_workers
        q, p = self._queues[w], self._workers[w]
        waited = 0.0
        try:
            while True:
                try:
                    got_j, payload = q.get(timeout=1.0)
                    break
                except queue.Empty:
                    waited += 1.0
                    if not p.is_alive():
                        try:  # it may have flushed its last item just before exiting
                            got_j, payload = q.get(timeout=0.5)
                            break
                        except queue.Empty:
                            pass
                        raise RuntimeError(
                            f"data worker {w} (pid {p.pid}) exited unexpectedly with code {p.exitcode}")
                    if waited >= self.timeout_s:
                        raise TimeoutError(f"data worker {w} produced nothing for {self.timeout_s:.0f}s")
        except (EOFError, OSError) as exc:
            p.join(timeout=1.0)
            raise RuntimeError(f"data worker {w} (pid {p.pid}) died while sending a batch "
                               f"(exit code {p.exitcode}): {type(exc).__name__}") from None
        if got_j == -1:
            raise RuntimeError(f"data worker {w} failed:\n{payload}")
        if got_j != j:  # pragma: no cover - would be a bug in the round-robin plan
            raise RuntimeError(f"data worker {w} sent micro-batch {got_j}, expected {j}")
        return payload

    # -- iteration ---------------------------------------------------------------
    def __iter__(self) -> Iterator[Tuple[int, List[Batch]]]:
        return self

    def __next__(self) -> Tuple[int, List[Batch]]:
        if self._closed:
            raise StopIteration
        step = self._step
        if self.end_step is not None and step >= self.end_step:
            self.close()
            raise StopIteration
        try:
            if self.num_workers == 0:
                batches = [_batch_for(self.dataset, r) for r in self.samples_for_step(step)]
            else:
                batches = [self._get(self._j + m) for m in range(self.acc)]
        except BaseException:
            self.close()
            raise
        self._j += self.acc
        self._step += 1
        return step, batches

    @staticmethod
    def _shutdown(workers, queues, stop) -> None:
        # Never read the queues here: a read can block on a batch whose writer is exiting.
        # Workers notice the flag within 0.2 s (they never wait longer than that on a full queue).
        if stop is not None:
            stop.set()
        for p in workers:
            p.join(timeout=3.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():  # pragma: no cover
                p.kill()
                p.join(timeout=1.0)
        for q in queues:
            try:
                q.cancel_join_thread()
                q.close()
            except Exception:  # noqa: BLE001 - shutting down
                pass
        workers.clear()
        queues.clear()

    def close(self) -> None:
        """Stop and reap the workers (idempotent)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "PretrainingBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["collate", "PretrainingBatches"]
