"""Indexed corpus, document splits and the ERNIE pretraining dataset (numpy only).

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

``ErnieDataset`` has one epoch of samples (``len``) and answers
``ds[i]`` for ANY ``i >= 0``: sample ``i`` is row ``perm_e[i % n]`` of the
mapping with ``e = i // n`` and ``perm_e`` a permutation keyed on
``(seed, e)``; its masking randomness is keyed on ``(seed, i)``.  Nothing
depends on how many samples a run will ask for, so changing ``max_steps``
never reorders the data and resuming at a step is pure index arithmetic.

Splits (``split_documents``): by default every document goes to train, valid
or test by a seeded shuffle (``shuffle_documents=True``), so a corpus sorted
by topic or date, or a directory of corpora, gets a representative
validation set; the number of documents per split is the same as with the
old contiguous ranges (``shuffle_documents=False``, kept for runs that began
with them).  Documents that cannot give a sample stay in train while there
are enough usable ones for valid and test.  The assignment depends only on
the seed, the split and the corpus index (integer hashing): identical on
every node, process and resume.
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .masking import MaskingConfig, MaskingTables, SampleBuilder
from .mapping import (_M64, LONG_SENTENCE_LEN, DataError, MappingBuildError, _mix64, build_mapping,
                      build_mapping_for_docs, build_mapping_py, get_or_build_mapping, helpers_available,
                      skipped_documents)
from .vocab import CORPUS_VOCAB_FILE_KEY, CORPUS_VOCAB_KEY, load_vocab

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")

_CHECK_CHUNK = 1 << 22  # sentences per step when checking sents against lens (bounded extra memory)


def _npz_string(z, key: str, path: str) -> Optional[str]:
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
                self.vocab_sha256: Optional[str] = _npz_string(z, CORPUS_VOCAB_KEY, idx_path)
                self.vocab_file: Optional[str] = _npz_string(z, CORPUS_VOCAB_FILE_KEY, idx_path)
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
    x = np.arange(n_docs, dtype=np.uint64) ^ np.uint64(_mix64((int(seed) ^ _SPLIT_SALT) & _M64))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


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


def _stream_id(name: str) -> int:
    return zlib.crc32(name.encode()) or 1


class ErnieDataset:
    """Masked pretraining samples of one split; ``ds[i]`` works for any ``i >= 0``."""

    def __init__(self, indexed: IndexedDataset, name: str, doc_range: Optional[Tuple[int, int]],
                 mapping: np.ndarray, tables: MaskingTables, masking: MaskingConfig, max_seq_len: int, seed: int,
                 mapping_path: Optional[str] = None, n_docs: Optional[int] = None,
                 dropped: Optional[Dict[str, int]] = None):
        if mapping.shape[0] == 0:
            raise DataError(f"split {name!r} has no samples")
        self.indexed = indexed
        self.name = name
        self.doc_range = doc_range  # None for a shuffled split (its documents are not a range)
        self.n_docs = n_docs if n_docs is not None else (doc_range[1] - doc_range[0] if doc_range else None)
        self.dropped = dropped or {}  # documents of the split that give no sample, by reason
        self.mapping = mapping
        self.mapping_path = mapping_path
        self.tables = tables
        self.masking = masking
        self.max_seq_len = max_seq_len
        self.seed = int(seed)
        self.max_predictions_per_seq = masking.predictions_per_seq(max_seq_len)
        self.pad_id = tables.pad_id
        self._stream = _stream_id(name)
        self._builder = SampleBuilder(tables, masking, max_seq_len, seed, stream=self._stream)
        self._perms: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.mapping.shape[0])

    def num_epochs_for(self, num_samples: int) -> float:
        return num_samples / len(self)

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            n = len(self)
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self._stream, epoch])))
            perm = rng.permutation(n)
            if n < (1 << 31):
                perm = perm.astype(np.int32)
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def row(self, i: int) -> Tuple[int, int, int, int]:
        """Mapping row ``(doc, start_sentence, end_sentence, target_len)`` of sample ``i``."""
        if i < 0:
            raise IndexError(f"sample index must be >= 0, got {i}")
        epoch, pos = divmod(i, len(self))
        r = self.mapping[int(self.epoch_permutation(epoch)[pos])]
        return int(r[0]), int(r[1]), int(r[2]), int(r[3])

    def __getitem__(self, i: int) -> Dict[str, Any]:
        i = int(i)
        _, s0, s1, target = self.row(i)
        ix = self.indexed
        t0, t1 = int(ix.sents[s0]), int(ix.sents[s1])
        tokens = np.asarray(ix.ids[t0:t1])
        sample = self._builder.build(tokens, ix.lens[s0:s1], target, i)
        return sample

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_perms"] = {}
        if self.mapping_path is not None:
            state["mapping"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.mapping is None:
            self.mapping = np.load(self.mapping_path, mmap_mode="r", allow_pickle=False)


def build_pretraining_datasets(prefix: str, vocab_file: str, split: Union[str, Sequence[float]], max_seq_len: int,
                               masking: Optional[MaskingConfig] = None, seed: int = 1234,
                               cache_dir: Optional[str] = None, is_builder: bool = True, timeout_s: float = 600.0,
                               run_id: Optional[str] = None, shuffle_documents: bool = True,
                               warn_dropped: bool = True) -> Dict[str, Optional[ErnieDataset]]:
    """``{"train": ErnieDataset, "valid": ..., "test": ...}`` for one corpus prefix, or a directory of them.

    A split whose weight is 0 is ``None``; a split with a positive weight but
    no documents or no usable samples raises :class:`DataError`.  The sample
    mapping of each split is cached in ``cache_dir`` (built by the caller with
    ``is_builder=True``, awaited by the others for at most ``timeout_s``).
    Documents go to splits by a seeded shuffle unless ``shuffle_documents`` is
    False (contiguous ranges in file order, the old behaviour).  Each dataset's
    ``dropped`` counts the documents that give no sample; the builder logs a
    warning for them unless ``warn_dropped`` is False (the caller reports them).
    """
    masking = masking or MaskingConfig()
    if max_seq_len < 8:
        raise DataError(f"max_seq_len must be >= 8, got {max_seq_len}")
    if masking.predictions_per_seq(max_seq_len) > max_seq_len:
        raise DataError("max_predictions_per_seq cannot exceed max_seq_len")
    indexed = open_indexed(prefix)
    vocab = load_vocab(vocab_file)
    recorded, digest = indexed.vocab_sha256, vocab.sha256
    if recorded is not None and recorded != digest:
        made_with = f" ({indexed.vocab_file})" if indexed.vocab_file else ""
        raise DataError(f"{prefix} was tokenized with another vocab{made_with}, sha256 {recorded[:12]}..., not "
                        f"{vocab_file} (sha256 {digest[:12]}...): its token ids would mean other tokens; use "
                        f"the vocab it was built with or re-tokenize it with this one")
    if indexed.n_tokens:
        probe = np.asarray(indexed.ids[: min(indexed.n_tokens, 1 << 20)])
        if int(probe.max()) >= vocab.size:
            raise DataError(f"{prefix} holds token id {int(probe.max())} but {vocab_file} has only {vocab.size} "
                            f"ids (base+##CJK extension): was the corpus built with another vocab?")
    tables = MaskingTables(vocab, masking.to_chinese_char)
    weights = parse_split(split)
    ranges = split_doc_ranges(indexed.n_docs, split)
    # The builders' skip rules per document: for the warnings, and to keep valid/test usable.
    short, has_long = skipped_documents(indexed.docs, indexed.lens, masking.binary_head)
    members = split_documents(indexed.n_docs, split, seed, usable=~(short | has_long)) if shuffle_documents else None
    split_str = split if isinstance(split, str) else ",".join(str(x) for x in split)
    max_num_tokens = masking.max_num_tokens(max_seq_len)
    min_sent = 2 if masking.binary_head else 1
    out: Dict[str, Optional[ErnieDataset]] = {}
    for name, weight in zip(SPLIT_NAMES, weights):
        lo, hi = ranges[name]
        if weight == 0:
            out[name] = None
            continue
        if hi <= lo:
            raise DataError(f"split {name!r} has 0 documents (corpus has {indexed.n_docs} documents, split "
                            f"{split_str!r}): use more documents or change split")
        index = members[name] if members is not None else None
        rows, info = get_or_build_mapping(
            indexed.docs, indexed.lens, None if index is not None else (lo, hi), prefix=prefix, split_name=name,
            split=split_str, max_seq_len=max_seq_len, max_num_tokens=max_num_tokens,
            short_seq_prob=masking.short_seq_prob, seed=seed, binary_head=masking.binary_head,
            n_tokens=indexed.n_tokens, cache_dir=cache_dir, is_builder=is_builder, timeout_s=timeout_s,
            run_id=run_id, doc_index=index)
        sel = index if index is not None else slice(lo, hi)
        dropped = {"documents": hi - lo, "too_few_sentences": int(np.count_nonzero(short[sel])),
                   "long_sentence": int(np.count_nonzero(has_long[sel])), "min_sentences": min_sent,
                   "long_sentence_len": LONG_SENTENCE_LEN}
        if rows.shape[0] == 0:
            why = (f" ({dropped['too_few_sentences']} docs with fewer than {min_sent} sentences, "
                   f"{dropped['long_sentence']} docs with a sentence > {LONG_SENTENCE_LEN} tokens)")
            raise DataError(f"split {name!r} has {hi - lo} documents but yields no samples{why}: use more/longer "
                            f"documents{' or binary_head=False' if masking.binary_head else ''}")
        out[name] = ErnieDataset(indexed, name, None if index is not None else (lo, hi), rows, tables, masking,
                                 max_seq_len, seed, mapping_path=info.get("path"), n_docs=hi - lo, dropped=dropped)
        where = f"{hi - lo} shuffled docs" if index is not None else f"docs [{lo}, {hi})"
        log.info("split %s: %s, %d samples per epoch", name, where, rows.shape[0])
        warning = dropped_warning(name, dropped)
        if warning and warn_dropped and is_builder:
            log.warning("%s", warning)
    return out


__all__ = ["IndexedDataset", "IndexedCorpora", "open_indexed", "corpus_prefixes", "ErnieDataset", "DataError", "MappingBuildError", "build_pretraining_datasets",
           "parse_split", "split_doc_ranges", "split_documents", "dropped_warning", "get_or_build_mapping",
           "build_mapping", "build_mapping_for_docs", "build_mapping_py", "helpers_available"]
