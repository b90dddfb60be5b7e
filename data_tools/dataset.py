"""The ERNIE pretraining dataset and its construction from an indexed corpus (numpy only).

``ErnieDataset`` has one epoch of samples (``len``) and answers
``ds[i]`` for ANY ``i >= 0``: sample ``i`` is row ``perm_e[i % n]`` of the
mapping with ``e = i // n`` and ``perm_e`` a permutation keyed on
``(seed, e)``; its masking randomness is keyed on ``(seed, i)``.  Nothing
depends on how many samples a run will ask for, so changing ``max_steps``
never reorders the data and resuming at a step is pure index arithmetic.

``build_pretraining_datasets`` puts it together: the corpus
(:mod:`data_tools.indexed`), the document splits (:mod:`data_tools.splits`),
the sample mapping of each split (:mod:`data_tools.mapping`) and the masking
(:mod:`data_tools.masking`).  The names of those modules that callers import
from here stay importable from here.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError, MappingBuildError
from .indexed import IndexedCorpora, IndexedDataset, corpus_prefixes, open_indexed
from .mapping import (LONG_SENTENCE_LEN, build_mapping, build_mapping_for_docs, build_mapping_py,
                      get_or_build_mapping, helpers_available, skipped_documents)
from .masking import MaskingConfig, MaskingTables, SampleBuilder
from .splits import SPLIT_NAMES, dropped_warning, parse_split, split_doc_ranges, split_documents
from .vocab import Vocab, load_vocab

log = logging.getLogger(__name__)


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
        return self._builder.build(tokens, ix.lens[s0:s1], target, i)

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


def _checked_vocab(indexed: IndexedDataset, prefix: str, vocab_file: str) -> Vocab:
    """The vocab, refused when the corpus recorded another one or holds ids beyond it."""
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
    return vocab


def _split_dataset(indexed: IndexedDataset, name: str, doc_range: Tuple[int, int], index: Optional[np.ndarray],
                   skipped: Tuple[np.ndarray, np.ndarray], *, prefix: str, split_str: str, max_seq_len: int,
                   masking: MaskingConfig, tables: MaskingTables, seed: int, is_builder: bool,
                   warn_dropped: bool, **cache: Any) -> ErnieDataset:
    """The dataset of one split: docs ``[lo, hi)``, or those of ``index`` (a shuffled split of hi - lo docs).

    ``skipped``: the builders' skip rules per corpus document; ``cache``: ``cache_dir``, ``timeout_s``, ``run_id``.
    """
    lo, hi = doc_range
    if hi <= lo:
        raise DataError(f"split {name!r} has 0 documents (corpus has {indexed.n_docs} documents, split "
                        f"{split_str!r}): use more documents or change split")
    rows, info = get_or_build_mapping(
        indexed.docs, indexed.lens, None if index is not None else (lo, hi), prefix=prefix, split_name=name,
        split=split_str, max_seq_len=max_seq_len, max_num_tokens=masking.max_num_tokens(max_seq_len),
        short_seq_prob=masking.short_seq_prob, seed=seed, binary_head=masking.binary_head,
        n_tokens=indexed.n_tokens, is_builder=is_builder, doc_index=index, **cache)
    sel = index if index is not None else slice(lo, hi)
    min_sent = 2 if masking.binary_head else 1
    dropped = {"documents": hi - lo, "too_few_sentences": int(np.count_nonzero(skipped[0][sel])),
               "long_sentence": int(np.count_nonzero(skipped[1][sel])), "min_sentences": min_sent,
               "long_sentence_len": LONG_SENTENCE_LEN}
    if rows.shape[0] == 0:
        why = (f" ({dropped['too_few_sentences']} docs with fewer than {min_sent} sentences, "
               f"{dropped['long_sentence']} docs with a sentence > {LONG_SENTENCE_LEN} tokens)")
        raise DataError(f"split {name!r} has {hi - lo} documents but yields no samples{why}: use more/longer "
                        f"documents{' or binary_head=False' if masking.binary_head else ''}")
    ds = ErnieDataset(indexed, name, None if index is not None else (lo, hi), rows, tables, masking,
                      max_seq_len, seed, mapping_path=info.get("path"), n_docs=hi - lo, dropped=dropped)
    where = f"{hi - lo} shuffled docs" if index is not None else f"docs [{lo}, {hi})"
    log.info("split %s: %s, %d samples per epoch", name, where, rows.shape[0])
    warning = dropped_warning(name, dropped)
    if warning and warn_dropped and is_builder:
        log.warning("%s", warning)
    return ds


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
    tables = MaskingTables(_checked_vocab(indexed, prefix, vocab_file), masking.to_chinese_char)
    weights = parse_split(split)
    ranges = split_doc_ranges(indexed.n_docs, split)
    # The builders' skip rules per document: for the warnings, and to keep valid/test usable.
    short, has_long = skipped_documents(indexed.docs, indexed.lens, masking.binary_head)
    members = split_documents(indexed.n_docs, split, seed, usable=~(short | has_long)) if shuffle_documents else None
    split_str = split if isinstance(split, str) else ",".join(str(x) for x in split)
    out: Dict[str, Optional[ErnieDataset]] = {}
    for name, weight in zip(SPLIT_NAMES, weights):
        out[name] = None if weight == 0 else _split_dataset(
            indexed, name, ranges[name], members[name] if members is not None else None, (short, has_long),
            prefix=prefix, split_str=split_str, max_seq_len=max_seq_len, masking=masking, tables=tables, seed=seed,
            is_builder=is_builder, warn_dropped=warn_dropped, cache_dir=cache_dir, timeout_s=timeout_s,
            run_id=run_id)
    return out


__all__ = ["IndexedDataset", "IndexedCorpora", "open_indexed", "corpus_prefixes", "ErnieDataset", "DataError",
           "MappingBuildError", "build_pretraining_datasets", "SPLIT_NAMES", "parse_split", "split_doc_ranges",
           "split_documents", "dropped_warning", "get_or_build_mapping", "build_mapping", "build_mapping_for_docs",
           "build_mapping_py", "helpers_available"]
