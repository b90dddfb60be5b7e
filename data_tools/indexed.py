"""Indexed corpora on disk: the token ids and sentence/document index of ``create_pretraining_data`` (numpy only).

``IndexedDataset(prefix)`` reads what ``create_pretraining_data`` wrote:
``<prefix>_ids.npy`` (memory-mapped token ids) and ``<prefix>_idx.npz``
(``lens``: sentence lengths, ``sents``: token offsets, ``docs``: sentence
offsets per document). ``open_indexed(directory)`` reads every such pair in a
directory as one corpus (``IndexedCorpora``).  The newer reference tool
(PaddleNLP ``model_zoo/ernie-1.0``) writes no ``sents``: it is then derived
from ``lens`` (int64, leading 0), as the reference reader does.  Ids, lens and
docs are used in the integer types they were written in (the reference's
uint16/int32 ids, int32 lens, int64 docs).  A corpus that recorded its
vocabulary (``vocab_sha256``, ``vocab_file``) exposes it, and
``build_pretraining_datasets`` refuses a vocab with other tokens.

Every name here is also importable from ``data_tools.dataset``.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np

from .errors import DataError
from .vocab import CORPUS_VOCAB_FILE_KEY, CORPUS_VOCAB_KEY

_CHECK_CHUNK = 1 << 22  # sentences per step when checking sents against lens (bounded extra memory)


def npz_string(z, key: str, path: str) -> Optional[str]:
    """A 0-d (or 1-element) string array of an npz, None when absent."""
    if key not in z.files:
        return None
    arr = np.asarray(z[key])
    if arr.size != 1 or arr.dtype.kind not in "US":
        raise DataError(f"{path}: {key!r} must be a single string, got dtype {arr.dtype} shape {arr.shape}")
    value = arr.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class IndexedDataset:
    """Memory-mapped token ids + sentence/document index of one corpus prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        ids_path, idx_path = prefix + "_ids.npy", prefix + "_idx.npz"
        for p in (ids_path, idx_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(
                    f"indexed corpus file not found: {p} (create it with `python -m "
                    f"data_tools.create_pretraining_data --input ... --vocab-file ... --output-prefix {prefix}`)")
        self.ids_path, self.idx_path = ids_path, idx_path
        try:
            self.ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{ids_path}: cannot read it as a .npy array ({e})") from None
        try:
            with np.load(idx_path, allow_pickle=False) as z:
                missing = [k for k in ("lens", "docs") if k not in z.files]
                if missing:
                    raise DataError(f"{idx_path} lacks array(s) {missing} (it has {sorted(z.files)})")
                self.lens = np.asarray(z["lens"])
                self.docs = np.asarray(z["docs"])
                # The newer reference tool does not store sents; it is cumsum(lens) with a leading 0.
                self.sents_derived = "sents" not in z.files
                self.sents = None if self.sents_derived else np.asarray(z["sents"])
                self.vocab_sha256: Optional[str] = npz_string(z, CORPUS_VOCAB_KEY, idx_path)
                self.vocab_file: Optional[str] = npz_string(z, CORPUS_VOCAB_FILE_KEY, idx_path)
        except DataError:
            raise
        except (OSError, ValueError, EOFError) as e:  # not a zip, truncated, pickled arrays, ...
            raise DataError(f"{idx_path}: cannot read it as an .npz index ({e})") from None
        if self.sents_derived:
            self._check_lens()
            self.sents = np.zeros(self.lens.shape[0] + 1, dtype=np.int64)
            np.cumsum(self.lens, dtype=np.int64, out=self.sents[1:])
        self._validate()

    def _check_lens(self) -> None:
        idx = self.idx_path
        if self.lens.ndim != 1 or not np.issubdtype(self.lens.dtype, np.integer):
            raise DataError(f"{idx}: lens must be a 1-D integer array, got dtype {self.lens.dtype} "
                            f"shape {self.lens.shape}")
        if self.lens.size and int(self.lens.min()) < 0:
            raise DataError(f"{idx}: lens holds a negative sentence length ({int(self.lens.min())})")

    def _validate(self, check_offsets: bool = True) -> None:
        """Shapes, types and the links between ids, lens, sents and docs; a DataError names the file.

        ``check_offsets=False`` skips the O(sentences) comparison of a stored ``sents`` with ``lens``
        (for corpora joined from parts that were each checked)."""
        ids_p, idx = self.ids_path, self.idx_path
        if self.ids.ndim != 1 or not np.issubdtype(self.ids.dtype, np.integer):
            raise DataError(f"{ids_p} must be a 1-D integer array, got dtype {self.ids.dtype} shape {self.ids.shape}")
        self._check_lens()
        n = self.lens.shape[0]
        for name in ("sents", "docs"):
            a = getattr(self, name)
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
                raise DataError(f"{idx}: {name} must be a 1-D integer array, got dtype {a.dtype} shape {a.shape}")
        if self.docs.shape[0] < 1:
            raise DataError(f"{idx}: docs is empty (it needs at least the leading 0)")
        if int(self.docs[0]) != 0 or int(self.docs[-1]) != n:
            raise DataError(f"{idx} is inconsistent: docs must run from 0 to the number of sentences "
                            f"len(lens)={n}, got {int(self.docs[0])}..{int(self.docs[-1])}")
        if self.docs.shape[0] > 1 and np.any(np.diff(self.docs) < 0):
            raise DataError(f"{idx} is inconsistent: docs (sentence offsets per document) decrease somewhere")
        if self.sents_derived:
            if int(self.sents[-1]) != self.ids.shape[0]:
                raise DataError(f"{idx} does not match {ids_p}: its sentence lengths (lens) add up to "
                                f"{int(self.sents[-1])} tokens but the ids file holds {self.ids.shape[0]}; "
                                f"the two files were not written together")
            return
        if self.sents.shape != (n + 1,):
            raise DataError(f"{idx} is inconsistent: {n} lens need {n + 1} sents entries, got {self.sents.shape[0]}")
        if int(self.sents[0]) != 0 or int(self.sents[-1]) != self.ids.shape[0]:
            raise DataError(f"{idx} does not match {ids_p}: sents must run from 0 to len(ids)={self.ids.shape[0]} "
                            f"(got {int(self.sents[0])}..{int(self.sents[-1])}); the two files were not written "
                            f"together")
        for lo in range(0, n if check_offsets else 0, _CHECK_CHUNK):
            hi = min(n, lo + _CHECK_CHUNK)
            step = np.diff(np.asarray(self.sents[lo:hi + 1], dtype=np.int64))
            if not np.array_equal(step, self.lens[lo:hi]):
                bad = lo + int(np.flatnonzero(step != self.lens[lo:hi])[0])
                raise DataError(f"{idx} is inconsistent: sentence {bad} has length {int(self.lens[bad])} in lens "
                                f"but {int(step[bad - lo])} in sents")

    @property
    def n_docs(self) -> int:
        return self.docs.shape[0] - 1

    @property
    def n_sentences(self) -> int:
        return self.lens.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.ids.shape[0]

    def sentence(self, i: int) -> np.ndarray:
        return self.ids[self.sents[i]:self.sents[i + 1]]

    def document(self, d: int) -> List[np.ndarray]:
        return [self.sentence(s) for s in range(int(self.docs[d]), int(self.docs[d + 1]))]

    def __getstate__(self):
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["prefix"])


def corpus_prefixes(path: str) -> List[str]:
    """A prefix as given, or for a directory every ``<prefix>_idx.npz`` + ``_ids.npy`` pair in it, in name order
    (the reference's ``input_dir``: a directory means all the corpora in it)."""
    if not os.path.isdir(path):
        return [path]
    names = sorted(f[: -len("_idx.npz")] for f in os.listdir(path) if f.endswith("_idx.npz"))
    prefixes = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n + "_ids.npy"))]
    if not prefixes:
        raise DataError(f"{path} is a directory with no <name>_ids.npy + <name>_idx.npz pair in it")
    return prefixes


class _ChainedIds:
    """Token ids of several corpora read as one array; a slice may not cross two files (samples never
    cross documents, and documents never cross files), except from the start (the vocab probe)."""

    def __init__(self, parts: List[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts]).astype(np.int64)
        self.shape = (int(self.starts[-1]),)
        self.ndim = 1
        self.dtype = parts[0].dtype  # the same in every part (IndexedCorpora checks)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("chained corpora support contiguous slices only")
        start = 0 if key.start is None else int(key.start)
        stop = self.shape[0] if key.stop is None else min(int(key.stop), self.shape[0])
        if stop <= start:
            return self.parts[0][0:0]
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop - 1, side="right")) - 1
        pieces = [self.parts[f][max(start, int(self.starts[f])) - int(self.starts[f]):
                                min(stop, int(self.starts[f + 1])) - int(self.starts[f])]
                  for f in range(first, last + 1)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class IndexedCorpora(IndexedDataset):
    """Several indexed corpora as one: documents in file order, ids memory-mapped per file."""

    def __init__(self, prefixes: Sequence[str], name: Optional[str] = None):
        parts = [IndexedDataset(p) for p in prefixes]
        if len({p.ids.dtype for p in parts}) != 1:
            raise DataError(f"the corpora {list(prefixes)} hold ids of different types; tokenize them with one vocab")
        digests = {p.vocab_sha256 for p in parts if p.vocab_sha256 is not None}
        if len(digests) > 1:
            which = ", ".join(f"{p.idx_path} ({p.vocab_sha256[:12]}...)" for p in parts if p.vocab_sha256)
            raise DataError(f"the corpora were tokenized with different vocabs (vocab_sha256 {which}); "
                            f"tokenize them with one vocab")
        recorded = [p for p in parts if p.vocab_sha256 is not None]
        self.vocab_sha256 = recorded[0].vocab_sha256 if recorded else None
        self.vocab_file = recorded[0].vocab_file if recorded else None
        self.sents_derived = any(p.sents_derived for p in parts)
        self.prefixes = list(prefixes)
        self.prefix = name or os.path.commonpath(self.prefixes)
        self.ids_path = ", ".join(p.ids_path for p in parts)
        self.idx_path = ", ".join(p.idx_path for p in parts)
        self.ids = _ChainedIds([p.ids for p in parts])
        self.lens = np.concatenate([p.lens for p in parts])
        tok = np.cumsum([0] + [p.n_tokens for p in parts]).astype(np.int64)
        sen = np.cumsum([0] + [p.n_sentences for p in parts]).astype(np.int64)
        self.sents = np.concatenate([np.asarray(parts[0].sents[:1], np.int64)]
                                    + [np.asarray(p.sents[1:], np.int64) + tok[k] for k, p in enumerate(parts)])
        self.docs = np.concatenate([np.asarray(parts[0].docs[:1], np.int64)]
                                   + [np.asarray(p.docs[1:], np.int64) + sen[k] for k, p in enumerate(parts)])
        self._validate(check_offsets=False)

    def __getstate__(self):
        return {"prefixes": self.prefixes, "prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["prefixes"], state["prefix"])


def open_indexed(path: str) -> IndexedDataset:
    """`IndexedDataset` for a prefix, `IndexedCorpora` for a directory of several."""
    prefixes = corpus_prefixes(path)
    return IndexedDataset(prefixes[0]) if len(prefixes) == 1 and prefixes[0] == path else IndexedCorpora(prefixes, path)


__all__ = ["IndexedDataset", "IndexedCorpora", "open_indexed", "corpus_prefixes"]
