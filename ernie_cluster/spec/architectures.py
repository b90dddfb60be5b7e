"""What the trainer builds, known without paddle: the built-in architectures, the config defaults a model
directory may rely on, the activations paddle provides, and how a vocab file sizes the embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

_BASE_ZH = {"vocab_size": 18000, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 513, "type_vocab_size": 2,
            "hidden_act": "relu", "pad_token_id": 0}
# ErnieConfig(**ErnieModel.pretrained_init_configuration[name]) in paddlenlp 2.8.1, for the shape keys.
# tests/test_spec.py compares this table with paddlenlp and with the trainer's model_config(), so they cannot drift.
BUILTIN_CONFIGS: Dict[str, Dict[str, Any]] = {
    "ernie-1.0-base-zh": _BASE_ZH,
    "ernie-1.0": _BASE_ZH,  # paddlenlp's deprecated alias of ernie-1.0-base-zh
    "ernie-1.0-large-zh-cw": {**_BASE_ZH, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                              "max_position_embeddings": 512},  # intermediate 3072 and vocab 18000: paddlenlp's values
}
BUILTIN_MODELS = tuple(BUILTIN_CONFIGS)
# What a config file may leave out: the trainer's setdefaults (train/model.py), then ErnieConfig's own defaults.
_TRAINER_DEFAULTS = {"hidden_act": "relu", "type_vocab_size": 2, "pad_token_id": 0}
_ERNIE_CONFIG_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                          "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 16,
                          "hidden_act": "gelu", "pad_token_id": 0}
# The shape keys: each is also a model.* field that overrides the model's config.
MODEL_SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings", "type_vocab_size")
# paddle.nn.TransformerEncoderLayer looks hidden_act up in paddle.nn.functional; these names exist there
# (tests/test_spec.py checks each against paddle).
ACTIVATIONS = ("relu", "gelu", "silu", "swish", "mish", "elu", "selu", "celu", "leaky_relu", "relu6", "sigmoid",
               "tanh", "hardswish", "hardsigmoid", "hardtanh", "softplus", "softsign", "tanhshrink", "log_sigmoid")


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def builtin_without_weights(name: str) -> str:
    """Why a built-in name alone is refused, and the two ways on."""
    return (f"{name!r} is a built-in architecture, not a set of weights: training would start from random weights "
            f"(pretraining from scratch), not continue the released ERNIE 1.0 (domain-adaptive pretraining). For "
            f"DAPT, fetch the released weights with `python -m ernie_cluster pretrained {name} --out DIR` on a machine "
            f"that reaches PaddleNLP's hosting, copy DIR to the cluster and set model.model_name_or_path: DIR; to "
            f"pretrain from scratch with this architecture, set model.random_init: true")


def padded_vocab_size(n: int, multiple: int = 8) -> int:
    """The trainer's vocab_size for a vocab file of n lines when model.vocab_size is not given."""
    return -(-n // multiple) * multiple


def count_vocab_lines(path: Path) -> int:
    """Lines of a vocab file: its token count, for the spec checks and the trainer alike."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)
