"""Sample mapping: which sentences form each pretraining sample (numpy only).

One *epoch* of rows ``(doc, start_sentence, end_sentence, target_len)`` is
built per split, by the C++ helper ``data_tools._helpers`` (compiled at install
time) or, when that is missing, by :func:`build_mapping_py` (identical output,
slower).  The epoch order is applied later by the dataset, from a permutation
keyed on ``(seed, epoch)``, so the sample stream never depends on ``max_steps``
(the reference keyed its shuffled map on ``max_num_samples``).

A split is either a contiguous document range ``[lo, hi)`` or an ascending
array of document indices (``doc_index``, the shuffled splits).  For an index
array :func:`build_mapping_for_docs` hands the builders a *virtual* corpus in
which every unselected document has no sentences, so the builders (C++ and
Python alike) still walk global document numbers: a document's rows, and its
target lengths keyed on ``(seed, global doc index)``, are the same whichever
split it lands in.

:func:`get_or_build_mapping` caches the rows in ``cache_dir``: one rank builds
(``is_builder=True``), writes atomically and on error leaves a failure marker;
the others wait with a deadline instead of polling forever (the file protocol
is :mod:`data_tools.mapping_cache`).  The 64-bit keys are
:mod:`data_tools.splitmix` (the same function as ``_helpers.cpp``'s ``mix64``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from typing import Optional, Tuple

import numpy as np

from .errors import DataError, MappingBuildError
from .mapping_cache import build_into_cache, wait_for_mapping
from .splitmix import GOLDEN as _GOLDEN
from .splitmix import M64 as _M64
from .splitmix import mix64 as _mix64

log = logging.getLogger(__name__)

MAPPING_ALGORITHM_VERSION = 1
LONG_SENTENCE_LEN = 512

try:  # compiled by `pip install -e .` / `python setup.py build_ext --inplace`
    from . import _helpers  # type: ignore
except ImportError:  # pragma: no cover - exercised only without a build
    _helpers = None


def helpers_available() -> bool:
    return _helpers is not None


def short_threshold(short_seq_prob: float) -> int:
    """Probability as an integer threshold on 32 random bits (exact in C++ and Python)."""
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    return int(round(short_seq_prob * (1 << 32)))


def _mapping_dtype(n_sentences: int, max_num_tokens: int) -> Tuple[type, bool]:
    big = max(n_sentences, max_num_tokens) >= (1 << 31) - 1
    return (np.int64, True) if big else (np.int32, False)


def build_mapping_py(docs: np.ndarray, lens: np.ndarray, doc_lo: int, doc_hi: int, max_num_tokens: int,
                     short_seq_prob: float, seed: int, binary_head: bool,
                     long_sentence_len: int = LONG_SENTENCE_LEN) -> Tuple[np.ndarray, dict]:
    """Pure-Python reference of the C++ builder (same rows, same stats)."""
    thr = short_threshold(short_seq_prob)
    if max_num_tokens < 2:
        raise ValueError("max_num_tokens must be >= 2")
    min_num_sent = 2 if binary_head else 1
    docs_l = docs.tolist() if isinstance(docs, np.ndarray) else list(docs)
    lens_l = lens.tolist() if isinstance(lens, np.ndarray) else list(lens)
    seed_key = _mix64(int(seed) & _M64)
    rows = []
    skipped_short = skipped_long = 0
    span = max_num_tokens - 1
    for d in range(doc_lo, doc_hi):
        first, last = docs_l[d], docs_l[d + 1]
        if last - first < min_num_sent:
            skipped_short += 1
            continue
        if max(lens_l[first:last]) > long_sentence_len:
            skipped_long += 1
            continue
        key = _mix64(seed_key ^ d)
        ctr = 0

        def draw_target() -> int:
            nonlocal ctr
            if thr == 0:
                return max_num_tokens
            ctr += 1
            x = _mix64((key + ctr * _GOLDEN) & _M64)
            if (x >> 32) < thr:
                ctr += 1
                y = _mix64((key + ctr * _GOLDEN) & _M64)
                return 2 + y % span
            return max_num_tokens

        target = draw_target()
        start = first
        seq_len = 0
        num_sent = 0
        for s in range(first, last):
            seq_len += lens_l[s]
            num_sent += 1
            remain = last - s - 1
            if (seq_len >= target and remain > 1 and num_sent >= min_num_sent) or remain == 0:
                rows.append((d, start, s + 1, target))
                start = s + 1
                target = draw_target()
                seq_len = 0
                num_sent = 0
    dtype, _ = _mapping_dtype(docs_l[-1] if docs_l else 0, max_num_tokens)
    out = np.array(rows, dtype=dtype).reshape(-1, 4)
    return out, {"skipped_short_docs": skipped_short, "skipped_long_docs": skipped_long}


def build_mapping(docs: np.ndarray, lens: np.ndarray, doc_lo: int, doc_hi: int, max_num_tokens: int,
                  short_seq_prob: float, seed: int, binary_head: bool,
                  long_sentence_len: int = LONG_SENTENCE_LEN, use_cpp: Optional[bool] = None
                  ) -> Tuple[np.ndarray, dict]:
    """Rows of one epoch for docs ``[doc_lo, doc_hi)``; C++ when available."""
    if use_cpp is None:
        use_cpp = _helpers is not None
    if not use_cpp:
        if _helpers is None:
            log.warning("data_tools._helpers is not compiled (run `pip install -e .`); building the sample "
                        "mapping in pure Python, which is slow for large corpora")
        return build_mapping_py(docs, lens, doc_lo, doc_hi, max_num_tokens, short_seq_prob, seed, binary_head,
                                long_sentence_len)
    if _helpers is None:
        raise RuntimeError("data_tools._helpers is not compiled: run `pip install -e .` or "
                           "`python setup.py build_ext --inplace` in the repository")
    n_sents = int(docs[-1]) if len(docs) else 0
    _, use64 = _mapping_dtype(n_sents, max_num_tokens)
    rows, sk_short, sk_long = _helpers.build_mapping(
        np.ascontiguousarray(docs, dtype=np.int64), np.ascontiguousarray(lens, dtype=np.int32),
        int(doc_lo), int(doc_hi), int(max_num_tokens), short_threshold(short_seq_prob),
        int(seed) & _M64, 2 if binary_head else 1, int(long_sentence_len), bool(use64))
    return rows, {"skipped_short_docs": int(sk_short), "skipped_long_docs": int(sk_long)}


def _check_doc_index(doc_index, n_docs: int) -> np.ndarray:
    idx = np.asarray(doc_index)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"doc_index must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (int(idx[0]) < 0 or int(idx[-1]) >= n_docs or np.any(idx[1:] <= idx[:-1])):
        raise ValueError(f"doc_index must be strictly increasing document indices in [0, {n_docs})")
    return idx


def _virtual_corpus(docs: np.ndarray, lens: np.ndarray, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(vdocs, vlens)`` over documents ``[0, idx[-1]]``: the documents in ``idx`` keep their sentences (in
    order), every other one has none.  Costs one byte per sentence of the range plus the gathered lens."""
    hi = int(idx[-1]) + 1
    docs_r = np.asarray(docs[:hi + 1], dtype=np.int64)
    counts = np.diff(docs_r)
    keep = np.zeros(hi, dtype=bool)
    keep[idx] = True
    vdocs = np.zeros(hi + 1, dtype=np.int64)
    np.cumsum(np.where(keep, counts, 0), out=vdocs[1:])
    s_lo = int(docs_r[int(idx[0])])
    sent_keep = np.repeat(keep[int(idx[0]):], counts[int(idx[0]):])
    vlens = np.ascontiguousarray(np.asarray(lens[s_lo:int(docs_r[hi])])[sent_keep], dtype=np.int32)
    return vdocs, vlens


def build_mapping_for_docs(docs: np.ndarray, lens: np.ndarray, doc_index: np.ndarray, max_num_tokens: int,
                           short_seq_prob: float, seed: int, binary_head: bool,
                           long_sentence_len: int = LONG_SENTENCE_LEN, use_cpp: Optional[bool] = None
                           ) -> Tuple[np.ndarray, dict]:
    """Rows of one epoch for the documents in ``doc_index`` (ascending).

    Equal to the rows of the whole corpus whose document is in ``doc_index``
    (C++ or Python builder on a virtual corpus, see the module docstring).
    """
    n_docs = len(docs) - 1
    idx = _check_doc_index(doc_index, n_docs)
    dtype, _ = _mapping_dtype(int(docs[-1]) if len(docs) else 0, max_num_tokens)
    if idx.size == 0:
        return np.zeros((0, 4), dtype=dtype), {"skipped_short_docs": 0, "skipped_long_docs": 0}
    vdocs, vlens = _virtual_corpus(docs, lens, idx)
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    vrows, stats = build_mapping(vdocs, vlens, lo, hi, max_num_tokens, short_seq_prob, seed, binary_head,
                                 long_sentence_len, use_cpp=use_cpp)
    # The empty documents between the selected ones were counted as too short: never really skipped.
    stats["skipped_short_docs"] -= (hi - lo) - int(idx.size)
    rows = np.asarray(vrows, dtype=np.int64)
    if rows.shape[0]:
        shift = np.asarray(docs[:hi], dtype=np.int64) - vdocs[:hi]  # virtual -> global sentence number
        s = shift[rows[:, 0]]
        rows[:, 1] += s
        rows[:, 2] += s
    return rows.astype(dtype, copy=False), stats


def skipped_documents(docs: np.ndarray, lens: np.ndarray, binary_head: bool,
                      long_sentence_len: int = LONG_SENTENCE_LEN) -> Tuple[np.ndarray, np.ndarray]:
    """Per document, the builders' two skip rules as boolean arrays ``(too_few_sentences, long_sentence)``
    (a document is counted under the first rule it breaks); numpy, O(sentences)."""
    docs = np.asarray(docs, dtype=np.int64)
    counts = np.diff(docs)
    short = counts < (2 if binary_head else 1)
    has_long = np.zeros(counts.shape[0], dtype=bool)
    nonempty = np.flatnonzero(counts > 0)
    if nonempty.size:  # docs[-1] == len(lens), so each segment is exactly one document
        has_long[nonempty] = np.maximum.reduceat(np.asarray(lens), docs[nonempty]) > long_sentence_len
    return short, has_long & ~short


def count_skipped_documents(docs: np.ndarray, lens: np.ndarray, doc_index: np.ndarray, binary_head: bool,
                            long_sentence_len: int = LONG_SENTENCE_LEN) -> dict:
    """The builders' skip counts for ``doc_index`` without building."""
    idx = _check_doc_index(doc_index, len(docs) - 1)
    short, has_long = skipped_documents(docs, lens, binary_head, long_sentence_len)
    return {"skipped_short_docs": int(np.count_nonzero(short[idx])),
            "skipped_long_docs": int(np.count_nonzero(has_long[idx]))}


def doc_index_digest(doc_index: np.ndarray) -> str:
    """Content hash of a document index (part of its mapping's cache name)."""
    idx = np.ascontiguousarray(doc_index, dtype="<i8")
    return hashlib.sha256(idx.tobytes()).hexdigest()[:20]


# ---------------------------------------------------------------------------
# cache


def mapping_cache_name(prefix: str, split_name: str, split: str, doc_range: Optional[Tuple[int, int]],
                       max_seq_len: int, short_seq_prob: float, seed: int, binary_head: bool, n_sentences: int,
                       n_tokens: int, long_sentence_len: int = LONG_SENTENCE_LEN,
                       doc_index: Optional[Tuple[int, str]] = None) -> str:
    """Cache file stem; ``doc_index=(count, digest)`` for an index split, which gets its own name pattern
    (``..._docindex_mapping_...``) so a contiguous-range cache is never read for it, nor the reverse."""
    fields = {
        "v": MAPPING_ALGORITHM_VERSION, "prefix": os.path.abspath(prefix), "split_name": split_name,
        "split": split, "max_seq_len": int(max_seq_len),
        "short_seq_prob": float(short_seq_prob), "seed": int(seed), "binary_head": bool(binary_head),
        "n_sentences": int(n_sentences), "n_tokens": int(n_tokens), "long": int(long_sentence_len),
    }
    if doc_index is None:
        fields["docs"] = list(map(int, doc_range))  # unchanged key: existing caches keep their names
        kind = "mapping"
    else:
        fields["doc_index"] = [int(doc_index[0]), str(doc_index[1])]
        kind = "docindex_mapping"
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    base = os.path.basename(os.path.abspath(prefix)) or "data"
    return f"{base}_{split_name}_{kind}_{digest}"


def _split_key(docs: np.ndarray, doc_range: Optional[Tuple[int, int]], doc_index: Optional[np.ndarray]):
    """``(lo, hi, doc_index, index_key, where)`` of a split given as a range or as a document index."""
    if (doc_range is None) == (doc_index is None):
        raise ValueError("pass exactly one of doc_range and doc_index")
    if doc_index is not None:
        doc_index = _check_doc_index(doc_index, len(docs) - 1)
        index_key: Optional[Tuple[int, str]] = (int(doc_index.size), doc_index_digest(doc_index))
        return 0, 0, doc_index, index_key, f"{doc_index.size} indexed docs"
    lo, hi = int(doc_range[0]), int(doc_range[1])
    return lo, hi, None, None, f"docs [{lo}, {hi})"


def get_or_build_mapping(docs: np.ndarray, lens: np.ndarray, doc_range: Optional[Tuple[int, int]], *, prefix: str,
                         split_name: str, split: str, max_seq_len: int, max_num_tokens: int,
                         short_seq_prob: float, seed: int, binary_head: bool, n_tokens: int,
                         cache_dir: Optional[str], is_builder: bool, timeout_s: float = 600.0,
                         poll_s: float = 0.5, run_id: Optional[str] = None,
                         long_sentence_len: int = LONG_SENTENCE_LEN,
                         doc_index: Optional[np.ndarray] = None) -> Tuple[np.ndarray, dict]:
    """Load the cached mapping for a split, or build it (builder) / wait for it (others).

    The split is ``doc_range=(lo, hi)``, or ``doc_range=None`` and ``doc_index`` (ascending document indices).

    * ``cache_dir=None``: build in memory, no file (every caller builds).
    * builder: loads a valid cached file, else builds, writes ``<name>.npy`` via
      temp file + ``os.replace`` (plus a ``.json`` description); on any error it
      writes ``<name>.failed`` with the traceback and re-raises.
    * others: wait until the file appears, raise :class:`MappingBuildError` when
      a failure marker from this run appears (same ``run_id``, or written after
      this call started when ``run_id`` is None) and ``TimeoutError`` after
      ``timeout_s``.

    Returns ``(rows, info)``; rows are memory-mapped when read from the cache.  ``info`` holds the skip
    counts (``skipped_short_docs``, ``skipped_long_docs``) when built, or read from the cache's ``.json``.
    """
    lo, hi, doc_index, index_key, where = _split_key(docs, doc_range, doc_index)

    def build() -> Tuple[np.ndarray, dict]:
        if doc_index is not None:
            return build_mapping_for_docs(docs, lens, doc_index, max_num_tokens, short_seq_prob, seed, binary_head,
                                          long_sentence_len)
        return build_mapping(docs, lens, lo, hi, max_num_tokens, short_seq_prob, seed, binary_head,
                             long_sentence_len)

    if cache_dir is None:
        t0 = time.time()
        rows, stats = build()
        stats.update(path=None, build_s=time.time() - t0)
        return rows, stats
    n_sents = int(docs[-1]) if len(docs) else 0
    name = mapping_cache_name(prefix, split_name, split, None if index_key else (lo, hi), max_seq_len,
                              short_seq_prob, seed, binary_head, n_sents, n_tokens, long_sentence_len,
                              doc_index=index_key)
    if not is_builder:
        return wait_for_mapping(cache_dir, name, timeout_s=timeout_s, poll_s=poll_s, run_id=run_id)
    docs_meta = {"docs": [lo, hi]} if index_key is None else \
        {"doc_index": {"documents": index_key[0], "sha256_20": index_key[1]}}

    def describe(rows: np.ndarray, stats: dict, build_s: float) -> dict:
        """The ``.json`` written next to the mapping (read back by the cache for the skip counts)."""
        return {"split_name": split_name, "split": split, **docs_meta, "prefix": os.path.abspath(prefix),
                "max_seq_len": max_seq_len, "max_num_tokens": max_num_tokens,
                "short_seq_prob": short_seq_prob, "seed": seed, "binary_head": binary_head,
                "samples_per_epoch": int(rows.shape[0]), "build_s": round(build_s, 3),
                "builder": f"{socket.gethostname()}:{os.getpid()}", "run_id": run_id,
                "algorithm_version": MAPPING_ALGORITHM_VERSION, **stats}

    return build_into_cache(cache_dir, name, build, describe, split_name=split_name, where=where, run_id=run_id)


__all__ = ["DataError", "MappingBuildError", "LONG_SENTENCE_LEN", "MAPPING_ALGORITHM_VERSION", "helpers_available",
           "short_threshold", "build_mapping", "build_mapping_py", "build_mapping_for_docs", "skipped_documents",
           "count_skipped_documents", "doc_index_digest", "mapping_cache_name", "get_or_build_mapping"]
