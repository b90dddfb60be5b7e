"""Sentences -> token ids for ``create_pretraining_data``, in this process or a pool of workers.

``Encoder`` splits a document into sentences (``split_sentences``: ``auto``
splits jsonl text only, ``all`` every file, ``none`` only at newlines; see
:data:`_SENT_SPLIT_RE`), tokenizes them (the builtin
:class:`~data_tools.tokenizer.FastWordPieceTokenizer` or paddlenlp's
``ErnieTokenizer``) and, for Chinese whole-word segmentation, writes the
``##`` marks of the 2nd..nth character of each word (jieba, or words already
separated by ``split_dimer``; LAC is never imported).  The marks are what
whole-word masking (:mod:`data_tools.masking`) later reads.

:func:`encoded_batches` runs it over batches of documents, in order, with a
process pool when ``workers > 1``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import re
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .corpus_input import Doc, InputError, iter_batches
from .tokenizer import FastWordPieceTokenizer, apply_whole_word_marks, whole_word_flags
from .vocab import is_wwm_cjk_char, load_vocab

# Sentence boundaries inside a line: after 。！？!?；; not followed by a closing quote or bracket, after such a
# quote or bracket that follows 。！？!?, and at the whitespace after a ".".  Deliberately simple: an abbreviation
# such as "e.g. x" gets a spurious boundary, which only moves where a sample may be cut.
_SENT_SPLIT_RE = re.compile(r"(?<=[。！？!?；;])(?![”’」』）)\"'])|(?<=[。！？!?][”’」』）)\"'])|(?<=\.)\s+(?=\S)")


SPLIT_MODES = ("auto", "all", "none")


def split_mode(value) -> str:
    """``auto``/``all``/``none``; True and False mean ``all`` and ``none`` (the former boolean option)."""
    if value is True or value is False:
        return "all" if value else "none"
    if value not in SPLIT_MODES:
        raise InputError(f"unknown sentence split mode {value!r} ({', '.join(SPLIT_MODES)})")
    return value


class Encoder:
    """Sentence -> ids, with optional Chinese whole-word ``##`` marks."""

    def __init__(self, vocab_file: str, whole_word: bool = False, seg_func: str = "jieba", splited: bool = False,
                 split_dimer: str = " ", max_word_length: int = 4, append_eos: bool = False,
                 split_sentences="auto", tokenizer: str = "builtin"):
        self.vocab = load_vocab(vocab_file)
        self.whole_word = whole_word
        self.splited = splited
        self.split_dimer = split_dimer
        self.max_word_length = max_word_length
        self.split_sentences = split_mode(split_sentences)
        self._segment = None
        if whole_word and not splited:
            if seg_func == "jieba":
                self._segment = _jieba().lcut
            elif seg_func != "none":
                raise InputError(f"unknown --cn-seg-func {seg_func!r} (jieba or none)")
        self.eos_id: Optional[int] = None
        if append_eos:
            for tok in ("[EOS]", "</s>", "[SEP]"):
                if tok in self.vocab.token_to_id and self.vocab.token_to_id[tok] < self.vocab.base_size:
                    self.eos_id = self.vocab.token_to_id[tok]
                    break
        if tokenizer == "builtin":
            self._encode_cjk = FastWordPieceTokenizer(self.vocab).encode_with_cjk
        elif tokenizer == "paddlenlp":
            self._encode_cjk = _paddlenlp_encoder(vocab_file, self.vocab)
        else:
            raise InputError(f"unknown --tokenizer {tokenizer!r} (builtin or paddlenlp)")

    def words(self, sentence: str) -> Optional[List[str]]:
        if not self.whole_word:
            return None
        if self.splited:
            return sentence.split(self.split_dimer)
        if self._segment is None:  # --cn-seg-func none: every character is its own word
            return None
        return self._segment(sentence)

    def encode_sentence(self, sentence: str) -> List[int]:
        ids, cjk_pos = self._encode_cjk(sentence)
        if cjk_pos:
            words = self.words(sentence)
            if words is not None:
                apply_whole_word_marks(ids, cjk_pos, whole_word_flags(words, self.max_word_length), self.vocab)
        return ids

    def splits(self, from_json: bool) -> bool:
        return self.split_sentences == "all" or (self.split_sentences == "auto" and from_json)

    def sentences(self, lines: Doc, split: Optional[bool] = None) -> Iterable[str]:
        if split is None:
            split = self.split_sentences == "all"
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if split:
                for s in _SENT_SPLIT_RE.split(line):
                    s = s.strip()
                    if s:
                        yield s
            else:
                yield line

    def encode_batch(self, docs: List[Doc], dtype: str, from_json: Optional[List[bool]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (ids, sentence lengths, sentences per document) for a batch of documents."""
        all_ids: List[int] = []
        lens: List[int] = []
        doc_counts: List[int] = []
        for k, doc in enumerate(docs):
            n = 0
            last_len_index = -1
            for sentence in self.sentences(doc, self.splits(bool(from_json and from_json[k]))):
                ids = self.encode_sentence(sentence)
                if ids:
                    all_ids.extend(ids)
                    lens.append(len(ids))
                    last_len_index = len(lens) - 1
                    n += 1
            if n and self.eos_id is not None:
                all_ids.append(self.eos_id)
                lens[last_len_index] += 1
            if n:
                doc_counts.append(n)
        return (np.array(all_ids, dtype=dtype), np.array(lens, dtype=np.int32),
                np.array(doc_counts, dtype=np.int64))


def _paddlenlp_encoder(vocab_file: str, vocab):
    """ErnieTokenizer-based encoder (parity/benchmark path; imports paddle)."""
    import zlib  # noqa: F401  (paddle 2.6 import-order bug: zlib/numpy before paddle)

    from paddlenlp.transformers import ErnieTokenizer

    tk = ErnieTokenizer(vocab_file=vocab_file)
    t2i = vocab.token_to_id
    unk = vocab.unk_id

    def encode(sentence: str):
        toks = tk.tokenize(sentence)
        ids = [t2i.get(t, unk) for t in toks]
        cjk_pos = [i for i, t in enumerate(toks) if is_wwm_cjk_char(t)]
        return ids, cjk_pos

    return encode


def _jieba():
    """jieba, initialised and quiet (imported only when needed; LAC is never imported)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


_WORKER: Optional[Encoder] = None


def _preload(kwargs: dict) -> None:
    """Build once in the parent what forked workers would otherwise each build (character classes, jieba)."""
    from .tokenizer import _char_classes

    _char_classes()
    if kwargs.get("whole_word") and not kwargs.get("splited") and kwargs.get("seg_func") == "jieba":
        _jieba()


def _init_worker(kwargs: dict) -> None:
    global _WORKER
    _WORKER = Encoder(**kwargs)


def _work(args: Tuple[List[Doc], List[bool], int, str]):
    docs, flags, nbytes, dtype = args
    assert _WORKER is not None
    ids, lens, counts = _WORKER.encode_batch(docs, dtype, flags)
    return ids, lens, counts, nbytes


@contextlib.contextmanager
def encoded_batches(files: Sequence[str], json_key: str, dtype: str, workers: int, enc_kwargs: dict
                    ) -> Iterator[Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray, int]]]:
    """``(ids, sentence lengths, sentences per document, input bytes)`` per batch of documents, in input order.

    ``enc_kwargs`` are :class:`Encoder`'s arguments.  With ``workers > 1`` a process pool encodes the batches;
    it is closed when the block ends, or terminated when it raises.
    """
    batches = ((docs, flags, nb, dtype) for docs, flags, nb in iter_batches(files, json_key))
    if workers <= 1:
        _init_worker(enc_kwargs)
        yield map(_work, batches)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if method == "fork":  # load once here; the workers inherit it instead of each rebuilding it
        _preload(enc_kwargs)
    pool = mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(enc_kwargs,))
    try:
        yield pool.imap(_work, batches, chunksize=1)
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()


__all__ = ["SPLIT_MODES", "split_mode", "Encoder", "encoded_batches"]
