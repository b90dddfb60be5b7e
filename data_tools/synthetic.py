"""Synthetic indexed corpora for tests and benchmarks (numpy only, no tokenizer).

``write_synthetic_indexed(out_dir)`` writes ``vocab.txt`` (specials, CJK
characters, their ``##`` forms) and ``<out_dir>/synth_ids.npy`` +
``synth_idx.npz`` in the layout of ``create_pretraining_data``, with Chinese
"words" of 1-4 characters (first character plain, the rest ``##``) and
documents long enough to fill 512-token samples.
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from .vocab import SPECIAL_TOKENS


def write_synthetic_indexed(out_dir: str, n_docs: int = 2000, seed: int = 0, n_chars: int = 3000,
                            sents_per_doc: Tuple[int, int] = (8, 40), sent_len: Tuple[int, int] = (10, 60),
                            long_sentence_docs: int = 0) -> dict:
    """Returns ``{"prefix", "vocab"}``; ``long_sentence_docs`` docs get a 600-token sentence."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    cjk = [chr(0x4E00 + i) for i in range(n_chars)]
    toks = list(SPECIAL_TOKENS) + cjk + ["##" + c for c in cjk]
    vocab = os.path.join(out_dir, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(toks) + "\n")
    nsent = rng.integers(sents_per_doc[0], sents_per_doc[1] + 1, n_docs)
    lens = rng.integers(sent_len[0], sent_len[1] + 1, int(nsent.sum())).astype(np.int32)
    if long_sentence_docs:
        docs_cum = np.concatenate([[0], np.cumsum(nsent)])
        for d in rng.choice(n_docs, size=long_sentence_docs, replace=False):
            lens[docs_cum[d]] = 600
    total = int(lens.sum())
    word_len = rng.choice([1, 2, 3, 4], size=total, p=[0.3, 0.45, 0.15, 0.1])
    starts = np.zeros(total, dtype=bool)
    cut = np.cumsum(word_len)
    starts[0] = True
    starts[cut[cut < total]] = True
    # a sentence always starts a word
    sent_starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    starts[sent_starts] = True
    char = 5 + rng.integers(0, n_chars, total)
    ids = np.where(starts, char, char + n_chars).astype(np.uint16 if len(toks) < 65535 else np.int32)
    prefix = os.path.join(out_dir, "synth")
    np.save(prefix + "_ids.npy", ids)
    sents = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=sents[1:])
    docs = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(nsent, out=docs[1:])
    np.savez(prefix + "_idx.npz", lens=lens, sents=sents, docs=docs)
    return {"prefix": prefix, "vocab": vocab, "tokens": total, "sentences": len(lens), "docs": n_docs}
