"""The model the trainer will build and the weights it will start from, checked without paddle: the effective
config (built-in table, model directory, model.* overrides, vocab), and what Paddle or the trainer would refuse
in it, in the starting weights, or in the vocab against the model directory and the tokenized corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .architectures import (_ERNIE_CONFIG_DEFAULTS, _TRAINER_DEFAULTS, ACTIVATIONS, BUILTIN_CONFIGS, MODEL_SIZE_KEYS,
                            count_vocab_lines, is_builtin, padded_vocab_size)
from .paths import abs_path, local_model_path

if TYPE_CHECKING:
    from .job import JobSpec


@dataclass
class ModelShape:
    """The effective model config (the keys known here) and the spec field each value comes from."""

    config: Dict[str, Any]
    origin: Dict[str, str]
    vocab_file: Optional[Path] = None
    vocab_lines: Optional[int] = None
    source: Any = None  # weights.ModelSource of the starting weights (a directory here, random_init false)
    dir_config: Optional[Dict[str, Any]] = None  # the directory's own config (defaults filled), before model.*


def effective_model_shape(spec: JobSpec) -> Tuple[ModelShape, List[Tuple[str, str]]]:
    """What `ernie_cluster.train.model.model_config` will build, as far as the files here tell.

    A built-in name: its table entry; a local directory that exists: its config file plus defaults (with
    random_init false the directory must also hold weights: `weights.resolve_model_dir`); a directory that
    does not exist here: only the spec's overrides are known. Returns (shape, problems).
    """
    from ..weights import WeightsError, model_dir_config, resolve_model_dir

    m, problems = spec.model, []
    name = m.model_name_or_path
    config: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    model_dir: Optional[Path] = None
    source = None
    dir_config = None
    model_path = local_model_path(name)
    if is_builtin(name):
        config = dict(BUILTIN_CONFIGS[name])
        origin = {k: "model.model_name_or_path" for k in config}
    elif model_path is not None:
        model_dir = model_path if model_path.is_dir() else model_path.parent
        try:
            if m.random_init:
                raw, _ = model_dir_config(model_path)
            else:
                source = resolve_model_dir(model_path, check=False)
                raw = source.config
            config = {**_ERNIE_CONFIG_DEFAULTS, **_TRAINER_DEFAULTS, **raw}
            dir_config = dict(config)
            origin = {k: "model.model_name_or_path" for k in config}
        except WeightsError as exc:
            problems.append(("model.model_name_or_path", str(exc)))
    vocab_file = None
    if spec.data.vocab_file is not None:
        vocab_file = abs_path(spec.data.vocab_file)
    elif model_dir is not None and (model_dir / "vocab.txt").is_file():
        vocab_file = model_dir / "vocab.txt"
    vocab_lines = None
    if vocab_file is not None and vocab_file.is_file():
        try:
            vocab_lines = count_vocab_lines(vocab_file)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(("data.vocab_file", f"cannot read {vocab_file}: {exc}; the trainer reads it as UTF-8 text"))
    if m.vocab_size is None and is_builtin(name) and vocab_lines is not None:
        config["vocab_size"] = padded_vocab_size(vocab_lines)
        origin["vocab_size"] = "data.vocab_file"
    for key in MODEL_SIZE_KEYS:
        if getattr(m, key) is not None:
            config[key] = getattr(m, key)
            origin[key] = f"model.{key}"
    return ModelShape(config, origin, vocab_file, vocab_lines, source, dir_config), problems


def model_shape_problems(spec: JobSpec, *, read_weights: bool = True) -> List[Tuple[str, str]]:
    """What Paddle or the trainer would refuse when building this model or loading its starting weights, as
    (field, message with the fix). `read_weights`: also read the tensor shapes of a model directory here."""
    shape, problems = effective_model_shape(spec)
    problems += _config_problems(spec, shape)
    problems += starting_weights_problems(spec, shape, read_weights=read_weights)
    return problems


def _origin_text(spec: JobSpec, shape: ModelShape, key: str) -> str:
    """Where the effective value of `key` comes from, as a message says it."""
    src = shape.origin.get(key, "")
    if src.startswith("model.") and src != "model.model_name_or_path":
        return src
    if src == "data.vocab_file":
        return f"{shape.vocab_file} padded to a multiple of 8"
    return f"{spec.model.model_name_or_path}'s config"


def _size_problems(spec: JobSpec, shape: ModelShape) -> List[Tuple[str, str]]:
    """Shape keys that are not positive whole numbers (a directory's config may hold anything)."""
    problems: List[Tuple[str, str]] = []
    for key in MODEL_SIZE_KEYS:
        if key not in shape.config:
            continue
        value = shape.config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append((shape.origin.get(key, "model.model_name_or_path"),
                             f"{key} is {value!r} in {_origin_text(spec, shape, key)}; it must be a positive whole "
                             f"number: set model.{key} to one"))
    return problems


def _config_problems(spec: JobSpec, shape: ModelShape) -> List[Tuple[str, str]]:
    """What paddle's ErnieModel or its embeddings would refuse in the effective config."""
    problems = _size_problems(spec, shape)
    if problems:
        return problems  # the checks below compare the sizes
    cfg, origin = shape.config, shape.origin

    def where(key: str) -> str:
        return _origin_text(spec, shape, key)

    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if hidden is not None and heads is not None and hidden % heads:
        field = next((f"model.{k}" for k in ("num_attention_heads", "hidden_size")
                      if origin.get(k) == f"model.{k}"), "model.model_name_or_path")
        divisors = sorted(sorted((d for d in range(1, hidden + 1) if hidden % d == 0), key=lambda d: abs(d - heads))[:3])
        problems.append((field, f"hidden_size {hidden} ({where('hidden_size')}) is not divisible by num_attention_heads "
                                f"{heads} ({where('num_attention_heads')}); set model.num_attention_heads to a divisor "
                                f"of {hidden} such as {', '.join(map(str, divisors))}, or change model.hidden_size"))
    max_pos = cfg.get("max_position_embeddings")
    if max_pos is not None and spec.train.max_seq_len > max_pos:
        problems.append(("train.max_seq_len", f"{spec.train.max_seq_len} exceeds max_position_embeddings {max_pos} "
                                              f"({where('max_position_embeddings')}); lower train.max_seq_len to "
                                              f"{max_pos} or less, or raise model.max_position_embeddings"))
    vocab = cfg.get("vocab_size")
    if vocab is not None and shape.vocab_lines is not None and shape.vocab_lines > vocab:
        field = ("model.vocab_size" if origin.get("vocab_size") == "model.vocab_size" else
                 "data.vocab_file" if spec.data.vocab_file is not None else "model.model_name_or_path")
        problems.append((field,
                         f"the vocab file {shape.vocab_file} has {shape.vocab_lines} tokens but vocab_size is {vocab} "
                         f"({where('vocab_size')}); set model.vocab_size to {padded_vocab_size(shape.vocab_lines)} or "
                         f"more, or use the model's own vocab"))
    types = cfg.get("type_vocab_size")
    if types is not None and types < 2 and spec.data.masking.binary_head:
        problems.append((origin.get("type_vocab_size", "model.model_name_or_path"),
                         f"type_vocab_size {types} ({where('type_vocab_size')}) has no token type 1, which the "
                         f"sentence-order samples use for their second segment; set model.type_vocab_size: 2 or "
                         f"data.masking.binary_head: false"))
    act = cfg.get("hidden_act")
    if act is not None and act not in ACTIVATIONS:
        problems.append(("model.model_name_or_path",
                         f"hidden_act {act!r} ({where('hidden_act')}) is not an activation paddle.nn.functional "
                         f"provides; use one of {', '.join(ACTIVATIONS)} in the model's config"))
    pad = cfg.get("pad_token_id")
    if vocab is not None and pad is not None and (not isinstance(pad, int) or not -vocab <= pad < vocab):
        problems.append(("model.model_name_or_path",
                         f"pad_token_id {pad!r} ({where('pad_token_id')}) is outside the vocabulary of {vocab}; "
                         f"paddle's embedding refuses it: fix the model's config or raise model.vocab_size"))
    return problems


def starting_weights_problems(spec: JobSpec, shape: ModelShape, *, read_weights: bool = True) -> List[Tuple[str, str]]:
    """A model directory here that training starts from (random_init false): what the trainer would refuse.

    model.* shape overrides the directory's config contradicts, a MANIFEST.json the files no longer match (sizes),
    tensors missing or of the wrong shape (`read_weights`: read without paddle), and a data.vocab_file whose
    tokens differ from the directory's vocab.txt. Each message names the file.
    """
    from ..weights import WeightsError, check_vocab, ernie_pretraining_shapes, shape_problems

    m, src = spec.model, shape.source
    if m.random_init:
        if shape.vocab_file is None and local_model_path(m.model_name_or_path) is not None:
            return [("data.vocab_file", f"no vocab: {m.model_name_or_path} has no vocab.txt; set data.vocab_file")]
        return []
    if src is None:
        return []
    problems: List[Tuple[str, str]] = []
    dir_config = shape.dir_config or {}
    for key in MODEL_SIZE_KEYS:
        value = getattr(m, key)
        if value is not None and key in dir_config and dir_config[key] != value:
            problems.append((f"model.{key}", f"{value} differs from {key} {dir_config[key]!r} in {src.config_origin}: "
                                             f"the starting weights would not fit; drop model.{key} (or set "
                                             f"model.random_init: true to train this architecture from random weights)"))
    if problems:
        return problems  # the shapes below would only repeat them
    if src.manifest_file is not None:
        from ..pretrained import ManifestError, verify_manifest

        try:
            verify_manifest(src.path, full=False)  # sizes here; the trainer checks every sha256
        except ManifestError as exc:
            problems.append(("model.model_name_or_path", str(exc)))
    if read_weights:
        try:
            found = shape_problems(src, ernie_pretraining_shapes(shape.config), allow_missing_heads=m.allow_missing_heads)
        except WeightsError as exc:
            found = [str(exc)]
        problems += [("model.model_name_or_path", f"starting weights {src.path} ({src.layout}) refused: {p}")
                     for p in found]
    vocab = abs_path(spec.data.vocab_file) if spec.data.vocab_file is not None else None
    vocab_size = shape.config.get("vocab_size")
    too_big = shape.vocab_lines is not None and isinstance(vocab_size, int) and shape.vocab_lines > vocab_size
    if (vocab is None or vocab.is_file()) and not too_big:  # a missing file or an oversized vocab: reported elsewhere
        try:
            check_vocab(src, vocab)
        except WeightsError as exc:
            problems.append(("data.vocab_file", str(exc)))
    return problems


def corpus_vocab_problems(spec: JobSpec) -> List[Tuple[str, str]]:
    """A tokenized corpus here that recorded its vocab (``vocab_sha256`` in ``_idx.npz``) must match the run's vocab."""
    from ..weights import WeightsError, check_vocab

    shape, _ = effective_model_shape(spec)
    vocab = shape.vocab_file
    prefix = abs_path(spec.data.input_prefix)
    if vocab is None or not vocab.is_file() or not (prefix.is_dir() or Path(f"{prefix}_idx.npz").is_file()):
        return []
    try:
        check_vocab(None, vocab, corpus_prefix=prefix)
    except WeightsError as exc:
        return [("data.input_prefix", str(exc))]
    return []
