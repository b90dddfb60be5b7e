"""ERNIE 1.0 for pretraining, built from a config (never downloaded), and our criterion.

Both engines use the same pieces:

* `model_config(spec)` -> a plain dict for `paddlenlp.transformers.ErnieConfig`:
  a built-in shape (``ernie-1.0-base-zh``: vocab 18000, hidden 768, 12 layers, 12 heads,
  intermediate 3072, max_position 513, type_vocab 2, relu) or a local model directory's
  ``config.json``/``model_config.json``, then the spec's ``model.*`` overrides;
* `create_model(config_dict)` -> ``ErnieForPretraining`` (in static or dynamic mode);
* `pretraining_losses(...)` -> masked-LM loss ``sum(ce*w)/max(sum(w),1)`` plus the
  sentence-order loss when ``binary_head``.

Parameters are always named by their structured names (``ernie.encoder.layers.0.
self_attn.q_proj.weight``); the static engine maps them to generated variable names.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

log = logging.getLogger("ernie_cluster.train")

CONFIG_FILES = ("config.json", "model_config.json")
WEIGHTS_FILE = "model_state.pdparams"

# The feeds of one micro-batch, in the order the static program declares them.
FEED_SPECS: Tuple[Tuple[str, str], ...] = (
    ("input_ids", "int64"),
    ("token_type_ids", "int64"),
    ("position_ids", "int64"),
    ("attention_mask", "float32"),
    ("masked_positions", "int64"),
    ("masked_lm_labels", "int64"),
    ("masked_lm_weights", "float32"),
    ("next_sentence_labels", "int64"),
)

_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size",
)


class ModelSetupError(RuntimeError):
    """A model/config problem the user has to fix; the trainer prints it and exits non-zero."""


def builtin_configs() -> Dict[str, Dict[str, Any]]:
    from paddlenlp.transformers import ErnieModel

    return ErnieModel.pretrained_init_configuration


def is_builtin(name: str) -> bool:
    return name in builtin_configs()


def read_vocab_size(vocab_file: str | Path) -> int:
    with open(vocab_file, encoding="utf-8") as f:
        return sum(1 for _ in f)


def padded(n: int, multiple: int = 8) -> int:
    return int(math.ceil(n / multiple) * multiple)


def local_model_dir(spec) -> Optional[Path]:
    """The model directory, or None for a built-in config (decided without importing paddle when possible)."""
    from ..spec import BUILTIN_MODELS

    name = spec.model.model_name_or_path
    if name in BUILTIN_MODELS:
        return None
    path = Path(name)
    if path.is_dir():
        return path
    if is_builtin(name):
        return None
    if not path.is_dir():
        raise ModelSetupError(f"model.model_name_or_path {name!r} is neither a built-in config "
                              f"({', '.join(sorted(builtin_configs()))}) nor a local directory")
    return path


def _read_dir_config(path: Path) -> Dict[str, Any]:
    for fname in CONFIG_FILES:
        f = path / fname
        if f.is_file():
            data = json.loads(f.read_text(encoding="utf-8"))
            data = data.get("init_args", [data])[0] if "init_args" in data else data  # very old layout
            return {k: v for k, v in data.items() if not k.startswith("_") and k not in ("architectures", "paddlenlp_version", "init_class")}
    raise ModelSetupError(f"{path} has no {' or '.join(CONFIG_FILES)}; it is not a model directory")


def vocab_file_for(spec) -> Optional[Path]:
    if spec.data.vocab_file:
        return Path(spec.data.vocab_file)
    d = local_model_dir(spec)
    if d is not None and (d / "vocab.txt").is_file():
        return d / "vocab.txt"
    return None


def model_config(spec) -> Dict[str, Any]:
    """The ErnieConfig kwargs for this spec (dropouts and shape overrides applied)."""
    m = spec.model
    d = local_model_dir(spec)
    if d is None:
        cfg = dict(builtin_configs()[m.model_name_or_path])
    else:
        cfg = _read_dir_config(d)
    vocab_file = vocab_file_for(spec)
    n_vocab = read_vocab_size(vocab_file) if vocab_file is not None else None
    if m.vocab_size is not None:
        cfg["vocab_size"] = int(m.vocab_size)
    elif d is None and n_vocab is not None:
        cfg["vocab_size"] = padded(n_vocab)
    for key in _CONFIG_KEYS:
        if key != "vocab_size" and getattr(m, key) is not None:
            cfg[key] = int(getattr(m, key))
    cfg["hidden_dropout_prob"] = float(m.hidden_dropout_prob)
    cfg["attention_probs_dropout_prob"] = float(m.attention_probs_dropout_prob)
    cfg.setdefault("hidden_act", "relu")
    cfg.setdefault("type_vocab_size", 2)  # ErnieConfig's own default is 16
    cfg.setdefault("pad_token_id", 0)
    if n_vocab is not None and n_vocab > cfg["vocab_size"]:
        raise ModelSetupError(
            f"the vocab file {vocab_file} has {n_vocab} tokens but the model's vocab_size is {cfg['vocab_size']}; "
            f"set model.vocab_size >= {padded(n_vocab)} or use the model's own vocab")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ModelSetupError(f"hidden_size {cfg['hidden_size']} is not divisible by num_attention_heads {cfg['num_attention_heads']}")
    if spec.train.max_seq_len > cfg["max_position_embeddings"]:
        raise ModelSetupError(f"train.max_seq_len {spec.train.max_seq_len} exceeds max_position_embeddings {cfg['max_position_embeddings']}")
    return cfg


def create_model(config: Dict[str, Any]):
    """ErnieForPretraining from a config dict (works under static and dynamic mode)."""
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    return ErnieForPretraining(ErnieConfig(**config))


def initial_weights(spec) -> Optional[Dict[str, np.ndarray]]:
    """Structured-name weights from a local model directory's model_state.pdparams, if any."""
    d = local_model_dir(spec)
    if d is None or not (d / WEIGHTS_FILE).is_file():
        return None
    import paddle

    state = paddle.load(str(d / WEIGHTS_FILE), return_numpy=True)
    return {k: np.asarray(v) for k, v in state.items()}


def match_initial_weights(weights: Dict[str, np.ndarray], shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    """Map a model directory's weights onto our structured names (ErnieModel-only files lack 'ernie.')."""
    out: Dict[str, np.ndarray] = {}
    for key, value in weights.items():
        name = key if key in shapes else ("ernie." + key if "ernie." + key in shapes else None)
        if name is None:
            log.warning("initial weights: %s is not a parameter of ErnieForPretraining; ignored", key)
            continue
        if tuple(value.shape) != tuple(shapes[name]):
            raise ModelSetupError(f"initial weights: {key} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(shapes[name])}; the model directory does not match model.* in the spec")
        out[name] = value
    missing = sorted(set(shapes) - set(out))
    if missing:
        level = logging.WARNING if any(not m.startswith("cls.") for m in missing) else logging.INFO
        log.log(level, "initial weights: %d parameters keep their random init: %s", len(missing), ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    return out


def no_decay(structured_name: str) -> bool:
    """Reference rule: no weight decay on biases and norm parameters."""
    return "bias" in structured_name or "norm" in structured_name


def pretraining_losses(prediction_scores, seq_relationship_score, masked_lm_labels, masked_lm_weights,
                       next_sentence_labels, binary_head: bool):
    """(total, lm, sop) with lm = sum(ce*w)/max(sum(w),1); sop is a zero tensor without binary_head."""
    import paddle
    import paddle.nn.functional as F

    ce = F.cross_entropy(prediction_scores, paddle.reshape(masked_lm_labels, [-1, 1]), ignore_index=-1, reduction="none")
    ce = paddle.reshape(ce, [-1])
    weights = paddle.reshape(masked_lm_weights, [-1])
    denom = paddle.maximum(paddle.sum(weights), paddle.full([], 1.0, dtype="float32"))
    lm_loss = paddle.sum(ce * weights) / denom
    if binary_head:
        sop_loss = paddle.mean(F.cross_entropy(seq_relationship_score, paddle.reshape(next_sentence_labels, [-1, 1]), reduction="none"))
        total = lm_loss + sop_loss
    else:
        sop_loss = paddle.full([], 0.0, dtype="float32")
        total = lm_loss
    return total, lm_loss, sop_loss


def forward_losses(model, batch: Dict[str, Any], binary_head: bool):
    """Run the model on one micro-batch (tensors or static vars) -> (total, lm, sop, logits, sop_logits)."""
    prediction_scores, seq_relationship_score = model(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        position_ids=batch["position_ids"],
        attention_mask=batch["attention_mask"],
        masked_positions=batch["masked_positions"],
    )
    total, lm, sop = pretraining_losses(prediction_scores, seq_relationship_score, batch["masked_lm_labels"],
                                        batch["masked_lm_weights"], batch["next_sentence_labels"], binary_head)
    return total, lm, sop, prediction_scores, seq_relationship_score


def canonical_names(names: Dict[str, str]) -> Tuple[List[str], Dict[str, str]]:
    """Given structured name -> variable/param name, return (canonical structured names, alias -> canonical).

    Tied parameters (the MLM decoder weight is the word embedding; `decoder_bias` is
    `decoder.bias`) share one variable; the first structured name in state_dict order is canonical.
    """
    first: Dict[str, str] = {}
    canon: List[str] = []
    aliases: Dict[str, str] = {}
    for sname, vname in names.items():
        if vname in first:
            aliases[sname] = first[vname]
        else:
            first[vname] = sname
            canon.append(sname)
    return canon, aliases


def save_tokenizer(spec, out_dir: Path) -> None:
    """ErnieTokenizer(vocab_file).save_pretrained(out_dir): vocab.txt, tokenizer_config.json, special_tokens_map.json."""
    vocab = vocab_file_for(spec)
    if vocab is None:
        log.warning("no vocab file (data.vocab_file or <model dir>/vocab.txt): tokenizer files not written to %s", out_dir)
        return
    from paddlenlp.transformers import ErnieTokenizer

    ErnieTokenizer(vocab_file=str(vocab)).save_pretrained(str(out_dir))


def write_model_config(config: Dict[str, Any], out_dir: Path) -> None:
    """config.json (read first by PaddleNLP 2.8) and model_config.json (the legacy name) with the same content."""
    from paddlenlp.transformers import ErnieConfig

    cfg = ErnieConfig(**config)
    cfg.architectures = ["ErnieForPretraining"]
    text = cfg.to_json_string(use_diff=False)
    for fname in CONFIG_FILES:
        (out_dir / fname).write_text(text, encoding="utf-8")
