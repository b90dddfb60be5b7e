"""Starting weights: which model directory, in which layout, checked before any training step.

One module per concern; every name is importable from here (``from ernie_cluster.weights import ...``):

* paddle-free (importing the package imports neither paddle nor numpy, so ``validate`` can use it on
  the login node):

  - `names`: file names, PaddleNLP's built-in ERNIE 1.0 configs, tied parameter names, `WeightsError`;
  - `config`: which config describes a directory (`clean_config`, `check_config`);
  - `layouts`: `resolve_model_dir(path) -> ModelSource` says which layout a directory has (the table is
    in its docstring), which files hold the weights, what the config says and how big the vocab is;
    `model_dir_config` reads the config alone;
  - `vocab`: `check_vocab(...)` decides which vocab the run uses and refuses mismatches;
  - `headers`: tensor names and shapes from safetensors headers and a numpy-only unpickler (`tensor_shapes`);
  - `mapping`: `ernie_pretraining_shapes(config)` and `shape_problems(source, shapes)`, which judges
    names and shapes by the rules `load_starting_weights` applies;
  - `manifest`: MANIFEST.json written and verified (re-exported by ``ernie_cluster.pretrained``);
  - `report`: `tensor_checksum` and `StartingWeightsReport`.

* paddle side (imported inside the functions):

  - `load`: `load_starting_weights(source, shapes)` reads every tensor, maps it onto ErnieForPretraining's
    structured names (``ernie.encoder.layers.0.self_attn.q_proj.weight``) and refuses anything partial;
  - `static`: the reference scripts' ``static_vars`` checkpoints, mapped by rebuilding the static program.

Every error names the file and what is missing or wrong.
"""

from __future__ import annotations

from .config import REQUIRED_CONFIG_KEYS, check_config, clean_config
from .headers import safetensors_header, tensor_shapes
from .layouts import ModelSource, model_dir_config, resolve_model_dir
from .load import load_starting_weights, read_source_tensors
from .mapping import ernie_pretraining_shapes, shape_problems
from .names import (ADDED_TOKENS_NAME, BUILTIN_CONFIGS, CONFIG_NAME, CONFIG_NAMES, CONVERT_REPORT_NAME,
                    ENCODER_PREFIX, ERNIE_TIES, HEADS_PREFIX, LEGACY_CACHE_WEIGHTS, LEGACY_CONFIG_NAME,
                    LEGACY_TIED_KEYS, MANIFEST_NAME, PADDLE_WEIGHTS_INDEX_NAME, PADDLE_WEIGHTS_NAME,
                    SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, SPECIAL_TOKENS_MAP_NAME, STATIC_CONFIG_YML,
                    STATIC_PARAMS_SUFFIX, STATIC_VARS, TOKENIZER_CONFIG_NAME, TOKENIZER_FILES, TRAINER_STATE_NAME,
                    VOCAB_NAME, WEIGHT_CANDIDATES, WeightsError)
from .report import StartingWeightsReport, tensor_checksum
from .static import StaticNameMap, map_static_names, static_name_maps
from .vocab import (CORPUS_VOCAB_KEY, VocabCheck, check_vocab, corpus_idx_files, corpus_vocab_digest,
                    read_vocab_tokens, vocab_digest)

__all__ = [
    "ADDED_TOKENS_NAME", "BUILTIN_CONFIGS", "CONFIG_NAME", "CONFIG_NAMES", "CONVERT_REPORT_NAME", "CORPUS_VOCAB_KEY",
    "ENCODER_PREFIX", "ERNIE_TIES", "HEADS_PREFIX", "LEGACY_CACHE_WEIGHTS", "LEGACY_CONFIG_NAME", "LEGACY_TIED_KEYS",
    "MANIFEST_NAME", "PADDLE_WEIGHTS_INDEX_NAME", "PADDLE_WEIGHTS_NAME", "REQUIRED_CONFIG_KEYS",
    "SAFE_WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME", "SPECIAL_TOKENS_MAP_NAME", "STATIC_CONFIG_YML",
    "STATIC_PARAMS_SUFFIX", "STATIC_VARS", "TOKENIZER_CONFIG_NAME", "TOKENIZER_FILES", "TRAINER_STATE_NAME",
    "VOCAB_NAME", "WEIGHT_CANDIDATES",
    "ModelSource", "StartingWeightsReport", "StaticNameMap", "VocabCheck", "WeightsError",
    "check_config", "check_vocab", "clean_config", "corpus_idx_files", "corpus_vocab_digest",
    "ernie_pretraining_shapes", "load_starting_weights", "map_static_names", "model_dir_config",
    "read_source_tensors", "read_vocab_tokens", "resolve_model_dir", "safetensors_header", "shape_problems",
    "static_name_maps", "tensor_checksum", "tensor_shapes", "vocab_digest",
]
