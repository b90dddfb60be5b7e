"""ERNIE 1.0 for pretraining, built from a config (never downloaded), its starting weights, and our criterion.

Both engines use the same pieces:

* `model_config(spec)` -> a plain dict for `paddlenlp.transformers.ErnieConfig`:
  a built-in shape (``ernie-1.0-base-zh``: vocab 18000, hidden 768, 12 layers, 12 heads,
  intermediate 3072, max_position 513, type_vocab 2, relu) or a local model directory's
  config (any layout `ernie_cluster.weights.resolve_model_dir` recognises), then the spec's
  ``model.*`` overrides (which a directory's weights must fit);
* `starting_weights(spec, shapes)` -> the directory's weights by structured name and a
  `StartingWeightsReport` (every tensor accounted for), or None for ``model.random_init``;
* `create_model(config_dict)` -> ``ErnieForPretraining`` (in static or dynamic mode);
* `pretraining_losses(...)` -> masked-LM loss ``sum(ce*w)/max(sum(w),1)`` plus the
  sentence-order loss when ``binary_head``.

Parameters are always named by their structured names (``ernie.encoder.layers.0.
self_attn.q_proj.weight``); the static engine maps them to generated variable names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger("ernie_cluster.train")

CONFIG_FILES = ("config.json", "model_config.json")

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


def local_model_dir(spec) -> Optional[Path]:
    """The model directory (or the reference's ``static_vars`` prefix), or None for a built-in architecture."""
    from ..spec import BUILTIN_MODELS

    name = spec.model.model_name_or_path
    if name in BUILTIN_MODELS:
        return None
    path = Path(name).expanduser()
    if path.is_dir() or Path(f"{path}.pdparams").is_file() or (path.is_file() and path.name == "static_vars.pdparams"):
        return path
    if is_builtin(name):
        return None
    raise ModelSetupError(f"model.model_name_or_path {name!r} is neither a built-in config "
                          f"({', '.join(sorted(builtin_configs()))}) nor a local directory")


def model_source(spec):
    """The recognised model directory training starts from (`weights.ModelSource`), or None when the run
    starts from random weights (``model.random_init``). A built-in name without random_init is refused."""
    from ..weights import WeightsError, resolve_model_dir

    m = spec.model
    if m.random_init:
        return None
    d = local_model_dir(spec)
    if d is None:
        from ..spec import builtin_without_weights

        raise ModelSetupError(builtin_without_weights(m.model_name_or_path))
    try:
        return resolve_model_dir(d)
    except WeightsError as exc:
        raise ModelSetupError(f"model.model_name_or_path: {exc}") from None


def _directory_description(spec):
    """The model directory's config and vocab, as a `weights.ModelSource` without weights (None for a built-in).

    Only the no-checkpoint start reads the weights (`starting_weights`): a resumed run needs the config and
    the vocab, not the starting tensors.
    """
    from ..weights import VOCAB_NAME, ModelSource, WeightsError, model_dir_config, read_vocab_tokens

    d = local_model_dir(spec)
    if d is None:
        return None
    try:
        cfg, origin = model_dir_config(d)
        directory = d if d.is_dir() else d.parent
        vocab = directory / VOCAB_NAME if (directory / VOCAB_NAME).is_file() else None
        return ModelSource(path=directory, layout="config", weights_format="", weight_files=(), config=dict(cfg),
                           config_origin=origin, vocab_file=vocab,
                           vocab_size=len(read_vocab_tokens(vocab)) if vocab is not None else None)
    except WeightsError as exc:
        raise ModelSetupError(f"model.model_name_or_path: {exc}") from None


def vocab_file_for(spec) -> Optional[Path]:
    """The run's vocab: data.vocab_file, else the model directory's vocab.txt. Starting from a directory's
    weights, a data.vocab_file whose tokens differ from its vocab.txt is refused (naming both files)."""
    d = _directory_description(spec)
    if spec.model.random_init or d is None:
        if spec.data.vocab_file:
            return Path(spec.data.vocab_file)
        return d.vocab_file if d is not None else None
    from ..weights import WeightsError, check_vocab

    try:
        return check_vocab(d, spec.data.vocab_file).vocab_file
    except WeightsError as exc:
        raise ModelSetupError(str(exc)) from None


def check_run_vocab(spec):
    """The vocab check against the tokenized corpus (its recorded ``vocab_sha256``): `weights.VocabCheck`."""
    from ..weights import WeightsError, check_vocab

    vocab = vocab_file_for(spec)
    if vocab is None:
        raise ModelSetupError("no vocab file: set data.vocab_file (or use a model directory with vocab.txt)")
    d = None if spec.model.random_init else _directory_description(spec)
    try:
        return check_vocab(d, vocab, corpus_prefix=spec.data.input_prefix)
    except WeightsError as exc:
        raise ModelSetupError(str(exc)) from None


def model_config(spec) -> Dict[str, Any]:
    """The ErnieConfig kwargs for this spec (dropouts and shape overrides applied)."""
    m = spec.model
    d = _directory_description(spec)
    cfg = dict(builtin_configs()[m.model_name_or_path]) if d is None else dict(d.config)
    if d is not None and not m.random_init:  # the weights must fit: an override may only repeat the directory's value
        for key in _CONFIG_KEYS:
            value = getattr(m, key)
            if value is not None and key in cfg and int(cfg[key]) != int(value):
                raise ModelSetupError(f"model.{key} {value} differs from {key} {cfg[key]} in {d.config_origin}: "
                                      f"the starting weights would not fit; drop model.{key}")
    vocab_file = vocab_file_for(spec)
    from ..spec import count_vocab_lines, padded_vocab_size

    n_vocab = count_vocab_lines(vocab_file) if vocab_file is not None else None
    if m.vocab_size is not None:
        cfg["vocab_size"] = int(m.vocab_size)
    elif d is None and n_vocab is not None:
        cfg["vocab_size"] = padded_vocab_size(n_vocab)
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
            f"set model.vocab_size >= {padded_vocab_size(n_vocab)} or use the model's own vocab")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ModelSetupError(f"hidden_size {cfg['hidden_size']} is not divisible by num_attention_heads {cfg['num_attention_heads']}")
    if spec.train.max_seq_len > cfg["max_position_embeddings"]:
        raise ModelSetupError(f"train.max_seq_len {spec.train.max_seq_len} exceeds max_position_embeddings {cfg['max_position_embeddings']}")
    return cfg


def starting_weights(spec, expected_shapes: Dict[str, Tuple[int, ...]], fresh=None):
    """(weights by structured name, StartingWeightsReport) of the model directory, or None with model.random_init.

    Every parameter of `expected_shapes` comes from the directory with its shape, or the load is refused
    (ModelSetupError listing every problem); heads it lacks come from `fresh` (the engine's own
    initialisation) only with model.allow_missing_heads.
    """
    from ..weights import WeightsError, load_starting_weights

    source = model_source(spec)
    if source is None:
        return None
    try:
        return load_starting_weights(source, expected_shapes, allow_missing_heads=spec.model.allow_missing_heads,
                                     fresh=fresh)
    except WeightsError as exc:
        raise ModelSetupError(str(exc)) from None


def create_model(config: Dict[str, Any]):
    """ErnieForPretraining from a config dict (works under static and dynamic mode)."""
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    return ErnieForPretraining(ErnieConfig(**config))


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
