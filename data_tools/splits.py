"""Which documents go to train, valid and test, and the warning for those that give no sample (numpy only).

By default (``split_documents``, ``shuffle=True``) every document goes to
train, valid or test by a seeded shuffle, so a corpus sorted by topic or date,
or a directory of corpora, gets a representative validation set; the number of
documents per split is the same as with the old contiguous ranges
(``shuffle=False``, kept for runs that began with them).  Documents that cannot
give a sample stay in train while there are enough usable ones for valid and
test.  The assignment depends only on the seed, the split and the corpus index
(integer hashing): identical on every node, process and resume.

Every name here is also importable from ``data_tools.dataset``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError
from .mapping import LONG_SENTENCE_LEN
from .splitmix import M64, mix64, mix64_array

SPLIT_NAMES = ("train", "valid", "test")


def parse_split(split: Union[str, Sequence[float]]) -> Tuple[float, float, float]:
    """``"949,50,1"`` -> normalised weights of train/valid/test (missing -> 0)."""
    if isinstance(split, str):
        parts = [p.strip() for p in split.replace("/", ",").split(",") if p.strip()]
        try:
            w = [float(p) for p in parts]
        except ValueError:
            raise DataError(f"split must be comma separated numbers like '949,50,1', got {split!r}") from None
    else:
        w = [float(x) for x in split]
    if not 1 <= len(w) <= 3 or any(x < 0 for x in w) or sum(w) <= 0:
        raise DataError(f"split needs 1 to 3 non-negative weights with a positive sum, got {split!r}")
    w = w + [0.0] * (3 - len(w))
    s = sum(w)
    return (w[0] / s, w[1] / s, w[2] / s)


def split_doc_ranges(n_docs: int, split: Union[str, Sequence[float]]) -> Dict[str, Tuple[int, int]]:
    """Contiguous document ranges per split (cumulative rounding, last ends at n_docs)."""
    w = parse_split(split)
    bounds = [0]
    acc = 0.0
    for x in w[:2]:
        acc += x
        bounds.append(min(n_docs, max(bounds[-1], int(round(acc * n_docs)))))
    bounds.append(n_docs)
    return {name: (bounds[i], bounds[i + 1]) for i, name in enumerate(SPLIT_NAMES)}


_SPLIT_SALT = 0x5B1D0C5E7A11D0C5  # keeps the split keys apart from the mapping's per-document keys


def _doc_keys(n_docs: int, seed: int) -> np.ndarray:
    """A distinct 64-bit key per document (splitmix64 finaliser of ``doc ^ f(seed)``: a bijection)."""
    return mix64_array(np.arange(n_docs, dtype=np.uint64) ^ np.uint64(mix64((int(seed) ^ _SPLIT_SALT) & M64)))


def _smallest_keys(keys: np.ndarray, members: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` members with the smallest keys; keys are distinct, so this is one well-defined set."""
    if k >= members.shape[0]:
        return members
    return members[np.argpartition(keys[members], k - 1)[:k]] if k > 0 else members[:0]


def split_documents(n_docs: int, split: Union[str, Sequence[float]], seed: int, shuffle: bool = True,
                    usable: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Ascending document indices per split.

    ``shuffle=False``: the contiguous ranges of :func:`split_doc_ranges`.
    ``shuffle=True``: the same number of documents per split, chosen by a
    seeded per-document key: valid takes the smallest keys, test the next,
    train the rest.  Documents that give no sample (``usable`` False) go to
    valid/test only when there are too few usable ones, so a small valid or
    test split is not left without samples.  O(n_docs); no Python ``hash()``
    and no numpy RNG stream, so it is the same on every machine and version.
    """
    ranges = split_doc_ranges(n_docs, split)
    if not shuffle:
        return {name: np.arange(lo, hi, dtype=np.int64) for name, (lo, hi) in ranges.items()}
    keys = _doc_keys(n_docs, seed)
    ok = np.ones(n_docs, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    labels = np.zeros(n_docs, dtype=np.int8)
    free = np.ones(n_docs, dtype=bool)
    for k, name in ((1, "valid"), (2, "test")):
        want = ranges[name][1] - ranges[name][0]
        for pool in (free & ok, free & ~ok):  # usable documents first
            if want <= 0:
                break
            chosen = _smallest_keys(keys, np.flatnonzero(pool), want)
            labels[chosen] = k
            free[chosen] = False
            want -= chosen.shape[0]
    return {name: np.flatnonzero(labels == k).astype(np.int64) for k, name in enumerate(SPLIT_NAMES)}


def dropped_warning(name: str, dropped: Dict[str, int]) -> Optional[str]:
    """One line on the documents of a split that give no samples, or None when there are none."""
    short, long_ = dropped.get("too_few_sentences", 0), dropped.get("long_sentence", 0)
    if not short and not long_:
        return None
    why = []
    if short:
        need = dropped.get("min_sentences", 2)
        why.append(f"{short} with fewer than {need} sentence{'s' if need > 1 else ''}"
                   + (" (sentence-order prediction, binary_head, needs 2: tokenize with sentence splitting or "
                      "turn binary_head off)" if need > 1 else ""))
    if long_:
        why.append(f"{long_} with a sentence longer than {dropped.get('long_sentence_len', LONG_SENTENCE_LEN)} "
                   f"tokens")
    return (f"split {name!r}: {short + long_} of {dropped.get('documents', '?')} documents dropped: "
            + "; ".join(why))


__all__ = ["SPLIT_NAMES", "parse_split", "split_doc_ranges", "split_documents", "dropped_warning"]
