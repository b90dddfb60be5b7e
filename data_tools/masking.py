"""Dynamic masking and sentence-order pairs for ERNIE 1.0 pretraining (numpy only).

Features of the reference ``create_masked_lm_predictions`` /
``build_training_sample`` (PaddleNLP ``data_tools``), computed with a few
vectorised numpy calls per sample instead of per-token Python:

* whole-word masking from ``##`` boundaries (Chinese words carry ``##`` marks
  written by the corpus tool) or per-token masking (``strategy="token"``);
* n-gram spans of 1..``max_ngrams`` words, p ~ 1/n (reversed with
  ``favor_longer_ngram``), or geometric span lengths (SpanBERT, p=0.2);
* ``num_to_predict = min(max_predictions_per_seq, max(1, round(len * masked_lm_prob)))``;
* 80% ``[MASK]`` / 10% random token / 10% unchanged;
* ``to_chinese_char``: ``##X`` of a CJK character becomes ``X`` in the model
  input and labels, while masking stays whole-word;
* sentence-order prediction: the sample's sentences split into A/B at a random
  sentence boundary, swapped half of the time (label 1 = swapped), truncated to
  the target length from random ends, ``[CLS] A [SEP] B [SEP]``.

Every random choice for a sample comes from one Philox stream keyed on
``(seed, stream)`` at counter ``sample_index``: deterministic per sample, cheap
to re-key (about 2 us, where ``np.random.RandomState(seed + idx)`` costs 160 us).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .splitmix import M64 as _M64
from .vocab import Vocab, is_wwm_cjk_char, load_vocab


@dataclass
class MaskingConfig:
    """How samples are built and masked (validated on construction)."""

    strategy: str = "whole_word"          # "whole_word" | "token"
    masked_lm_prob: float = 0.15
    max_ngrams: int = 3
    span: str = "ngram"                   # "ngram" (p ~ 1/n) | "geometric" (SpanBERT)
    geometric_p: float = 0.2
    max_span: Optional[int] = None        # cap of geometric spans in words (default: max_ngrams)
    favor_longer_ngram: bool = False
    max_predictions_per_seq: Optional[int] = None   # default: round(max_seq_len * masked_lm_prob)
    short_seq_prob: float = 0.1
    binary_head: bool = True              # sentence-order prediction (SOP) pairs
    to_chinese_char: bool = True
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1

    def __post_init__(self) -> None:
        errs = []
        if self.strategy not in ("whole_word", "token"):
            errs.append(f"strategy must be 'whole_word' or 'token', got {self.strategy!r}")
        if self.span not in ("ngram", "geometric"):
            errs.append(f"span must be 'ngram' or 'geometric', got {self.span!r}")
        if not 0.0 < self.masked_lm_prob < 1.0:
            errs.append(f"masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        if not isinstance(self.max_ngrams, int) or self.max_ngrams < 1:
            errs.append(f"max_ngrams must be an int >= 1, got {self.max_ngrams!r}")
        if not 0.0 < self.geometric_p <= 1.0:
            errs.append(f"geometric_p must be in (0, 1], got {self.geometric_p}")
        if self.max_span is not None and (not isinstance(self.max_span, int) or self.max_span < 1):
            errs.append(f"max_span must be None or an int >= 1, got {self.max_span!r}")
        if self.max_predictions_per_seq is not None and (
                not isinstance(self.max_predictions_per_seq, int) or self.max_predictions_per_seq < 1):
            errs.append(f"max_predictions_per_seq must be None or an int >= 1, got {self.max_predictions_per_seq!r}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            errs.append(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not (0.0 <= self.mask_token_prob and 0.0 <= self.random_token_prob
                and self.mask_token_prob + self.random_token_prob <= 1.0):
            errs.append("mask_token_prob and random_token_prob must be >= 0 with a sum <= 1")
        for name in ("favor_longer_ngram", "binary_head", "to_chinese_char"):
            if not isinstance(getattr(self, name), bool):
                errs.append(f"{name} must be a bool, got {getattr(self, name)!r}")
        if errs:
            raise ValueError("invalid MaskingConfig: " + "; ".join(errs))

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "MaskingConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MaskingConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def predictions_per_seq(self, max_seq_len: int) -> int:
        """P: the fixed number of prediction slots per sequence in a batch."""
        if self.max_predictions_per_seq is not None:
            return self.max_predictions_per_seq
        return max(1, int(round(max_seq_len * self.masked_lm_prob)))

    def max_num_tokens(self, max_seq_len: int) -> int:
        """Tokens of text per sample: max_seq_len minus [CLS]/[SEP](/[SEP])."""
        return max_seq_len - (3 if self.binary_head else 2)


class MaskingTables:
    """Per-vocabulary lookup arrays used by the masking code."""

    def __init__(self, vocab: Vocab, to_chinese_char: bool = True):
        self.vocab = vocab
        n = vocab.size
        toks = vocab.tokens
        t2i = vocab.token_to_id
        self.is_cont = np.fromiter((t.startswith("##") for t in toks), dtype=bool, count=n)
        input_map = np.arange(n, dtype=np.int64)
        for i, t in enumerate(toks):
            if len(t) > 2 and t.startswith("##") and is_wwm_cjk_char(t[2]):
                # extension ids must always go back to the character; real vocab ##X only with to_chinese_char
                if i >= vocab.base_size or to_chinese_char:
                    j = t2i.get(t[2:])
                    if j is not None:
                        input_map[i] = j
                    elif i >= vocab.base_size:  # pragma: no cover - extension is built from existing chars
                        input_map[i] = vocab.unk_id
        self.input_map = input_map
        self.vocab_size = vocab.base_size
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = vocab.cls_id, vocab.sep_id, vocab.mask_id, vocab.pad_id

    @classmethod
    def from_file(cls, vocab_file: str, to_chinese_char: bool = True) -> "MaskingTables":
        return cls(load_vocab(vocab_file), to_chinese_char)


class _Spans:
    """Precomputed span-length sampling for a MaskingConfig."""

    def __init__(self, cfg: MaskingConfig):
        self.geometric = cfg.span == "geometric"
        self.p = cfg.geometric_p
        self.cap = cfg.max_span if (self.geometric and cfg.max_span is not None) else cfg.max_ngrams
        pvals = 1.0 / np.arange(1, cfg.max_ngrams + 1)
        pvals /= pvals.sum()
        if cfg.favor_longer_ngram:
            pvals = pvals[::-1]
        cdf = np.cumsum(pvals)
        cdf[-1] = 1.0
        self.cdf = cdf

    def sample(self, rng: np.random.Generator, w: int) -> np.ndarray:
        if self.geometric:
            n = rng.geometric(self.p, size=w)
            np.minimum(n, self.cap, out=n)
        else:
            n = np.searchsorted(self.cdf, rng.random(w), side="right") + 1
        # an n-gram starting near the end has fewer words available (the reference's slices shorten too)
        return np.minimum(n, np.arange(w, 0, -1))


def _select_spans(order: list, n: list, cwl: list, num_to_predict: int) -> int:
    """Greedy non-overlapping span choice in random order; returns the covered-word bitmask."""
    covered = 0
    count = 0
    for s in order:
        if count >= num_to_predict:
            break
        k = n[s]
        base = cwl[s]
        tl = cwl[s + k] - base
        while count + tl > num_to_predict and k > 1:
            k -= 1
            tl = cwl[s + k] - base
        if count + tl > num_to_predict:
            continue
        m = ((1 << k) - 1) << s
        if covered & m:
            continue
        covered |= m
        count += tl
    return covered


def _word_starts(ids: np.ndarray, special: np.ndarray, tables: MaskingTables, cfg: MaskingConfig,
                 after_special: Optional[list]) -> np.ndarray:
    """Per position: a maskable unit starts here (a whole word from the ``##`` marks, or any token with
    ``strategy="token"``); [CLS]/[SEP] never start one."""
    if cfg.strategy == "token":
        return ~special
    start = ~(tables.is_cont[ids] | special)
    # a word never continues across [CLS]/[SEP]
    if after_special is None:
        after = np.flatnonzero(special[:-1]) + 1
        start[after] = ~special[after]
    else:
        for p in after_special:
            if not special[p]:
                start[p] = True
    return start


def _covered_words(covered: int, w: int) -> np.ndarray:
    """The bitmask of :func:`_select_spans` as one bool per word."""
    nbytes = (w + 7) // 8
    return np.unpackbits(np.frombuffer(covered.to_bytes(nbytes, "little"), dtype=np.uint8),
                         count=w, bitorder="little").view(bool)


def _replace_masked(inp: np.ndarray, positions: np.ndarray, tables: MaskingTables, cfg: MaskingConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """A copy of ``inp`` with ``[MASK]`` / a random token / the token itself at ``positions`` (80/10/10)."""
    out = inp.copy()
    r = rng.random(positions.shape[0])
    out[positions[r < cfg.mask_token_prob]] = tables.mask_id
    rnd = positions[r >= 1.0 - cfg.random_token_prob]
    if rnd.shape[0]:
        # random vocabulary entry, as the model would see it (no ##CJK under to_chinese_char)
        out[rnd] = tables.input_map[(rng.random(rnd.shape[0]) * tables.vocab_size).astype(np.int64)]
    return out


def mask_sequence(ids: np.ndarray, special: np.ndarray, tables: MaskingTables, cfg: MaskingConfig,
                  rng: np.random.Generator, max_predictions: int, spans: Optional[_Spans] = None,
                  after_special: Optional[list] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask one sequence of stored token ids.

    ``ids``: int64 ids as stored (``##`` marks included), ``special``: bool mask
    of [CLS]/[SEP] positions (never masked, and words never continue across them);
    ``after_special``: the positions right after them, when the caller knows them.
    Returns ``(input_ids, masked_positions, masked_labels)``; ``input_ids`` are
    the model inputs (``to_chinese_char`` applied, masks/random tokens placed),
    labels are the unmasked model-input ids at the positions (sorted).
    """
    t = ids.shape[0]
    inp = tables.input_map[ids]
    if spans is None:
        spans = _Spans(cfg)
    start = _word_starts(ids, special, tables, cfg, after_special)
    boundary = np.flatnonzero(start | special)
    is_word = start[boundary]
    ends = np.empty_like(boundary)
    ends[:-1] = boundary[1:]
    ends[-1] = t
    wstart = boundary[is_word]
    w = wstart.shape[0]
    num_to_predict = min(max_predictions, max(1, int(round(t * cfg.masked_lm_prob))))
    if w == 0:
        empty = np.zeros(0, dtype=np.int64)
        return inp, empty, empty
    wlen = ends[is_word] - wstart
    cwl = np.zeros(w + 1, dtype=np.int64)
    np.cumsum(wlen, out=cwl[1:])
    n = spans.sample(rng, w)
    order = rng.permutation(w)
    covered = _select_spans(order.tolist(), n.tolist(), cwl.tolist(), num_to_predict)
    if not covered:
        empty = np.zeros(0, dtype=np.int64)
        return inp, empty, empty
    masked = _covered_words(covered, w)[np.cumsum(start) - 1]  # the word of each token
    masked &= ~special
    positions = np.flatnonzero(masked)
    labels = inp[positions]
    out = _replace_masked(inp, positions, tables, cfg, rng)
    return out, positions.astype(np.int64, copy=False), labels


def create_masked_lm_predictions(token_ids: np.ndarray, tables: MaskingTables, config: MaskingConfig,
                                 rng: np.random.Generator, max_predictions: Optional[int] = None
                                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference-equivalent entry point: ``token_ids`` include [CLS]/[SEP].

    Returns ``(input_ids, masked_positions, masked_labels)`` as int64 arrays.
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    special = (ids == tables.cls_id) | (ids == tables.sep_id)
    if max_predictions is None:
        max_predictions = config.predictions_per_seq(ids.shape[0])
    return mask_sequence(ids, special, tables, config, rng, max_predictions)


def truncated_lengths(la: int, lb: int, target: int) -> Tuple[int, int]:
    """Lengths after the reference's loop "drop one token from the longer side
    (B on ties) until ``la + lb <= target``", in closed form."""
    excess = la + lb - target
    if excess <= 0:
        return la, lb
    d = abs(la - lb)
    if excess <= d:
        return (la - excess, lb) if la > lb else (la, lb - excess)
    r = excess - d
    m = min(la, lb)
    return m - r // 2, m - (r + 1) // 2


class SampleBuilder:
    """Builds masked (SOP) samples from sentence tokens, deterministic per sample index."""

    def __init__(self, tables: MaskingTables, config: MaskingConfig, max_seq_len: int, seed: int, stream: int = 0):
        if max_seq_len < 8:
            raise ValueError(f"max_seq_len must be >= 8, got {max_seq_len}")
        self.tables = tables
        self.cfg = config
        self.max_seq_len = max_seq_len
        self.max_num_tokens = config.max_num_tokens(max_seq_len)
        self.max_predictions = config.predictions_per_seq(max_seq_len)
        self.seed = int(seed)
        self._spans = _Spans(config)
        self._key = np.array([int(seed) & _M64, int(stream) & _M64], dtype=np.uint64)
        self._local = threading.local()  # one generator per thread: __getitem__ is thread-safe

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def rng_for(self, sample_index: int) -> np.random.Generator:
        """This thread's generator, positioned at the stream of ``sample_index`` (reused object)."""
        loc = self._local
        try:
            bg, rng, counter, buf = loc.parts
        except AttributeError:
            bg = np.random.Philox(key=0)
            loc.parts = (bg, np.random.Generator(bg), np.zeros(4, dtype=np.uint64), np.zeros(4, dtype=np.uint64))
            bg, rng, counter, buf = loc.parts
        counter[2] = int(sample_index) & _M64
        bg.state = {"bit_generator": "Philox", "state": {"counter": counter, "key": self._key},
                    "buffer": buf, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
        return rng

    def build(self, tokens: np.ndarray, sent_lens: np.ndarray, target_len: int, sample_index: int
              ) -> Dict[str, Any]:
        """``tokens``: the sample's sentences concatenated (stored ids);
        ``sent_lens``: their lengths; ``target_len``: text tokens wanted."""
        rng = self.rng_for(sample_index)
        cfg = self.cfg
        target = min(int(target_len), self.max_num_tokens)
        total = int(tokens.shape[0])
        if cfg.binary_head:
            ns = sent_lens.shape[0]
            if ns < 2:
                raise ValueError("sentence-order prediction needs samples with >= 2 sentences")
            u = rng.random(2)
            a_end = 1 if ns < 3 else 1 + min(int(u[0] * (ns - 1)), ns - 2)
            cut = int(sent_lens[:a_end].sum())
            swapped = bool(u[1] < 0.5)
            if swapped:
                a_lo, a_hi, b_lo, b_hi = cut, total, 0, cut
            else:
                a_lo, a_hi, b_lo, b_hi = 0, cut, cut, total
            la, lb = a_hi - a_lo, b_hi - b_lo
            na, nb = truncated_lengths(la, lb, target)
            if na < la:
                a_lo += int(rng.binomial(la - na, 0.5))
            if nb < lb:
                b_lo += int(rng.binomial(lb - nb, 0.5))
            t = na + nb + 3
            ids = np.empty(t, dtype=np.int64)
            ids[0] = self.tables.cls_id
            ids[1:1 + na] = tokens[a_lo:a_lo + na]
            ids[1 + na] = self.tables.sep_id
            ids[2 + na:2 + na + nb] = tokens[b_lo:b_lo + nb]
            ids[t - 1] = self.tables.sep_id
            special = np.zeros(t, dtype=bool)
            special[0] = special[1 + na] = special[t - 1] = True
            after = (1, 2 + na)
            types = np.zeros(t, dtype=np.int64)
            types[2 + na:] = 1
            label = int(swapped)
        else:
            na = min(total, target)
            lo = int(rng.binomial(total - na, 0.5)) if na < total else 0
            t = na + 2
            ids = np.empty(t, dtype=np.int64)
            ids[0] = self.tables.cls_id
            ids[1:1 + na] = tokens[lo:lo + na]
            ids[t - 1] = self.tables.sep_id
            special = np.zeros(t, dtype=bool)
            special[0] = special[t - 1] = True
            after = (1,)
            types = np.zeros(t, dtype=np.int64)
            label = 0
        inp, pos, labels = mask_sequence(ids, special, self.tables, cfg, rng, self.max_predictions, self._spans,
                                         after)
        return {"input_ids": inp, "token_type_ids": types, "masked_positions": pos, "masked_lm_labels": labels,
                "next_sentence_label": label}


__all__ = ["MaskingConfig", "MaskingTables", "SampleBuilder", "create_masked_lm_predictions", "mask_sequence",
           "truncated_lengths"]
