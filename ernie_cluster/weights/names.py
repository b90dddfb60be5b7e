"""The spellings every weights module shares: file names, built-in ERNIE 1.0 models, tied names, the error.

Standard library only (``validate`` imports it on the login node).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

# one spelling: the checkpoint's own names
from ..train.ckpt_format import MANIFEST_FILE as MANIFEST_NAME, STATE_FILE as TRAINER_STATE_NAME  # noqa: F401

# ---------------------------------------------------------------------------
# file names (PaddleNLP 2.8.1: paddlenlp/utils/env.py, transformers/tokenizer_utils_base.py)
# ---------------------------------------------------------------------------

CONFIG_NAME = "config.json"
LEGACY_CONFIG_NAME = "model_config.json"
CONFIG_NAMES = (CONFIG_NAME, LEGACY_CONFIG_NAME)  # the order PaddleNLP 2.8 tries them
PADDLE_WEIGHTS_NAME = "model_state.pdparams"
PADDLE_WEIGHTS_INDEX_NAME = "model_state.pdparams.index.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
ADDED_TOKENS_NAME = "added_tokens.json"
TOKENIZER_FILES = (VOCAB_NAME, TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_MAP_NAME, ADDED_TOKENS_NAME)
STATIC_VARS = "static_vars"
STATIC_PARAMS_SUFFIX = ".pdparams"
STATIC_CONFIG_YML = "config.yml"          # the reference's model_last/config.yml (model_name, global_step)
CONVERT_REPORT_NAME = "convert_report.json"  # what convert.py writes beside its output (its REPORT_FILE)

# Weight files in the order PaddleNLP 2.8.1's `_resolve_model_file_path` prefers them in a directory.
WEIGHT_CANDIDATES: Tuple[Tuple[str, str], ...] = (
    (SAFE_WEIGHTS_INDEX_NAME, "safetensors_sharded"),
    (SAFE_WEIGHTS_NAME, "safetensors"),
    (PADDLE_WEIGHTS_INDEX_NAME, "pdparams_sharded"),
    (PADDLE_WEIGHTS_NAME, "pdparams"),
)

# ---------------------------------------------------------------------------
# PaddleNLP's built-in ERNIE 1.0 models
# ---------------------------------------------------------------------------

# Older PaddleNLP caches kept the URL's base name (ERNIE_PRETRAINED_RESOURCE_FILES_MAP["model_state"]).
LEGACY_CACHE_WEIGHTS: Dict[str, str] = {
    "ernie-1.0": "ernie_v1_chn_base.pdparams",
    "ernie-1.0-base-zh": "ernie_v1_chn_base.pdparams",
    "ernie-1.0-base-zh-cw": "ernie_1.0_base_zh_cw.pdparams",
    "ernie-1.0-large-zh-cw": "ernie_1.0_large_zh_cw.pdparams",
}

# ERNIE 1.0 entries of paddlenlp 2.8.1's ERNIE_PRETRAINED_INIT_CONFIGURATION (a test keeps them equal),
# so the paddle-free layer knows a cache directory's config without importing paddlenlp.
_ERNIE_1_BASE = {
    "attention_probs_dropout_prob": 0.1, "hidden_act": "relu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "initializer_range": 0.02, "max_position_embeddings": 513, "num_attention_heads": 12, "num_hidden_layers": 12,
    "type_vocab_size": 2, "vocab_size": 18000, "pad_token_id": 0,
}
BUILTIN_CONFIGS: Dict[str, Dict[str, Any]] = {
    "ernie-1.0": dict(_ERNIE_1_BASE),
    "ernie-1.0-base-zh": dict(_ERNIE_1_BASE),
    "ernie-1.0-base-zh-cw": {
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
        "initializer_range": 0.02, "max_position_embeddings": 512, "num_attention_heads": 12,
        "num_hidden_layers": 12, "task_type_vocab_size": 3, "type_vocab_size": 4, "use_task_id": True,
        "vocab_size": 40000,
    },
    "ernie-1.0-large-zh-cw": {
        "attention_probs_dropout_prob": 0.1, "hidden_act": "relu", "hidden_dropout_prob": 0.1, "hidden_size": 1024,
        "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
        "num_attention_heads": 16, "num_hidden_layers": 24, "type_vocab_size": 2, "vocab_size": 18000,
        "pad_token_id": 0,
    },
}

# ---------------------------------------------------------------------------
# ErnieForPretraining's structured names
# ---------------------------------------------------------------------------

ENCODER_PREFIX = "ernie."
HEADS_PREFIX = "cls."
# ErnieForPretraining's tied parameters (alias -> canonical): the MLM decoder weight *is* the word
# embedding, and `decoder_bias` is `decoder.bias` (paddlenlp 2.8.1 ErnieLMPredictionHead).
ERNIE_TIES: Dict[str, str] = {
    "cls.predictions.decoder.weight": "ernie.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.decoder_bias",
}
# Older PaddleNLP heads registered the tied embedding as `decoder_weight`.
LEGACY_TIED_KEYS: Dict[str, str] = {
    "cls.predictions.decoder_weight": "ernie.embeddings.word_embeddings.weight",
}


class WeightsError(RuntimeError):
    """The starting weights (or their vocab) cannot be used as they are; the message says which file and why."""
