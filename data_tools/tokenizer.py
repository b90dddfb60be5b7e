"""A fast WordPiece tokenizer that reproduces paddlenlp's ``ErnieTokenizer``.

``ErnieTokenizer`` (BERT's BasicTokenizer + WordpieceTokenizer) walks the text
character by character in Python and needs ``import paddle`` (6+ s).  This
module gives the same tokens with a handful of C-level string operations per
sentence and a per-word cache:

1. remove control characters (only when ``str.isprintable`` says there may be any),
2. lower-case, NFD-normalise and drop combining marks (``Mn``) for non-ASCII text,
3. one regex ``findall``: every CJK/punctuation/symbol character is its own
   piece, everything else is split on whitespace,
4. greedy longest-match-first WordPiece per piece, cached.

The equivalence with ``ErnieTokenizer(vocab_file=...)`` is checked in the
tests.  ``[PAD] [CLS] [SEP] [MASK] [UNK]`` written literally in the text stay
ordinary text, as with ``ErnieTokenizer(vocab_file=...)``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple

from .vocab import Vocab, is_wwm_cjk_char, load_vocab

_CLASSES: Optional[Tuple["re.Pattern[str]", "re.Pattern[str]", "re.Pattern[str]"]] = None

_EXTRA_SYMBOLS = {0x00AD, 0x00B2, 0x00BA, 0x3007, 0x00B5, 0x00D8, 0x014B, 0x01B1}


_BERT_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _ranges_to_class(flags) -> str:
    import numpy as np

    f = np.frombuffer(bytes(flags), dtype=np.uint8).astype(np.int8)
    d = np.diff(np.concatenate(([0], f, [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}"
                   for lo, hi in zip(starts.tolist(), ends.tolist()))


def _char_classes():
    """Regexes built once per process from ``unicodedata`` (about 0.3 s)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    category = unicodedata.category
    cats = [category(chr(cp)) for cp in range(0x110000)]
    # punctuation, symbols, CJK: always a token of their own (BERT's _is_punctuation/_is_symbol/_is_chinese_char)
    single = bytearray(c[0] in "PS" for c in cats)
    for lo, hi in ((33, 47), (58, 64), (91, 96), (123, 126)) + _BERT_CJK_RANGES:
        single[lo:hi + 1] = b"\x01" * (hi - lo + 1)
    for cp in _EXTRA_SYMBOLS:
        single[cp] = 1
    # removed by BERT's _clean_text: categories C* except \t \n \r, plus NUL and U+FFFD
    control = bytearray(c[0] == "C" for c in cats)
    for cp in (9, 10, 13):
        control[cp] = 0
    control[0] = control[0xFFFD] = 1
    mn = bytearray(c == "Mn" for c in cats)  # combining marks stripped after NFD
    single_cls = _ranges_to_class(single)
    token_re = re.compile(f"[{single_cls}]|[^\\s{single_cls}]+")
    control_re = re.compile(f"[{_ranges_to_class(control)}]+")
    mn_re = re.compile(f"[{_ranges_to_class(mn)}]+")
    _CLASSES = (token_re, control_re, mn_re)
    return _CLASSES


class FastWordPieceTokenizer:
    """``ErnieTokenizer``-compatible tokenizer over a local vocab file."""

    max_input_chars_per_word = 100

    def __init__(self, vocab: "Vocab | str", do_lower_case: bool = True, cache_size: int = 500_000):
        self.vocab = load_vocab(vocab) if isinstance(vocab, str) else vocab
        self.do_lower_case = do_lower_case
        self._token_re, self._control_re, self._mn_re = _char_classes()
        self._base = {t: i for t, i in self.vocab.token_to_id.items() if i < self.vocab.base_size}
        self._unk = self.vocab.unk_id
        self._cache: Dict[str, Tuple[int, ...]] = {}
        self._cache_size = cache_size

    # -- basic tokenization --------------------------------------------------
    def normalize(self, text: str) -> str:
        if not text.isprintable():
            text = self._control_re.sub("", text)
        if "\ufffd" in text:
            text = text.replace("\ufffd", "")
        if self.do_lower_case:
            text = text.lower()
            if not text.isascii():
                text = unicodedata.normalize("NFD", text)
                text = self._mn_re.sub("", text)
        return text

    def basic_tokenize(self, text: str) -> List[str]:
        """Pieces before WordPiece.

        Like ``ErnieTokenizer(vocab_file=...)``, a literal ``[MASK]`` in the
        text is ordinary text (lower-cased and split), never a special token.
        """
        return self._token_re.findall(self.normalize(text))

    # -- wordpiece -------------------------------------------------------------
    def _wordpiece(self, word: str) -> Tuple[int, ...]:
        vocab = self._base
        if word in vocab:
            return (vocab[word],)
        n = len(word)
        if n > self.max_input_chars_per_word:
            return (self._unk,)
        ids = []
        start = 0
        while start < n:
            end = n
            found = None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                found = vocab.get(sub)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return (self._unk,)
            ids.append(found)
            start = end
        return tuple(ids)

    def _piece_ids(self, piece: str) -> Tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is None:
            ids = self._wordpiece(piece)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (no [CLS]/[SEP] added)."""
        out: List[int] = []
        get = self._piece_ids
        for piece in self.basic_tokenize(text):
            out.extend(get(piece))
        return out

    def encode_with_cjk(self, text: str) -> Tuple[List[int], List[int]]:
        """Ids plus the output positions of single-CJK-character tokens in order."""
        out: List[int] = []
        cjk_pos: List[int] = []
        get = self._piece_ids
        lo, hi = "\u4e00", "\u9fa5"
        for piece in self.basic_tokenize(text):
            if len(piece) == 1 and lo <= piece <= hi:
                cjk_pos.append(len(out))
            out.extend(get(piece))
        return out, cjk_pos

    def tokenize(self, text: str) -> List[str]:
        toks = self.vocab.tokens
        return [toks[i] for i in self.encode(text)]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> List[str]:
        toks = self.vocab.tokens
        return [toks[int(i)] for i in ids]


def whole_word_flags(words: Sequence[str], max_word_length: int = 4) -> List[bool]:
    """One flag per WWM-CJK character of the concatenated ``words``: True when the
    character continues a Chinese word (gets the ``##`` mark).

    A word gets marks when it consists only of CJK characters and has 2 to
    ``max_word_length`` of them (the reference's limit is 4).  Unlike the
    reference (which greedily matches token strings against the *set* of
    segmented words) the marks follow the segmenter's actual boundaries.
    """
    flags: List[bool] = []
    lo, hi = "\u4e00", "\u9fa5"
    for w in words:
        if not w or w.isascii():
            continue
        n = len(w)
        if n == 1:
            if lo <= w <= hi:
                flags.append(False)
            continue
        c = 0
        for ch in w:
            if lo <= ch <= hi:
                c += 1
        if c == 0:
            continue
        if c == n and n <= max_word_length:
            flags.append(False)
            flags.extend([True] * (n - 1))
        else:
            flags.extend([False] * c)
    return flags


def apply_whole_word_marks(ids: List[int], cjk_pos: List[int], flags: List[bool], vocab: Vocab) -> bool:
    """Replace continuation CJK ids by their ``##`` id in place.

    Returns False (and leaves ``ids`` alone) when the segmentation does not line
    up with the tokens, which can only happen for exotic input (e.g. CJK
    compatibility ideographs that NFD rewrites).
    """
    if len(flags) != len(cjk_pos):
        return False
    cont = vocab.continuation_id
    unk = vocab.unk_id
    for p, f in zip(cjk_pos, flags):
        if f:
            i = ids[p]
            if i != unk:
                ids[p] = cont(i)
    return True


__all__ = ["FastWordPieceTokenizer", "whole_word_flags", "apply_whole_word_marks", "is_wwm_cjk_char"]
