"""A random pretraining micro-batch of fixed shape, for engine tests that need no corpus."""

from __future__ import annotations

from typing import Dict

import numpy as np


def random_batch(seed: int, *, vocab: int, seq: int, pred: int, batch: int = 2) -> Dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {
        "input_ids": rng.randint(5, vocab, (batch, seq)).astype("int64"),
        "token_type_ids": np.zeros((batch, seq), "int64"),
        "position_ids": np.tile(np.arange(seq, dtype="int64"), (batch, 1)),
        "attention_mask": np.zeros((batch, 1, 1, seq), "float32"),
        "masked_positions": (np.arange(batch * pred) * 3).astype("int64"),
        "masked_lm_labels": rng.randint(5, vocab, (batch * pred, 1)).astype("int64"),
        "masked_lm_weights": np.ones(batch * pred, "float32"),
        "next_sentence_labels": np.zeros((batch, 1), "int64"),
    }
