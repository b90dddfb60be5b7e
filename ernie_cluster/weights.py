"""Starting weights: which model directory, in which layout, checked before any training step.

Two layers in one module:

* **paddle-free** (importing this module imports neither paddle nor numpy, so `validate` can
  call it on the login node): `resolve_model_dir(path) -> ModelSource` says which layout a
  directory has, which files hold the weights, what the config says and how big the vocab is;
  `check_vocab(...)` decides which vocab the run uses and refuses mismatches;
  `shape_problems(source, ernie_pretraining_shapes(config))` judges names and shapes from the file
  headers / a numpy-only unpickler (`tensor_shapes`), as `load_starting_weights` would. Every error
  names the file and what is missing or wrong.
* **paddle side** (imported inside the functions): `load_starting_weights(source, shapes)`
  reads every tensor, maps it onto ErnieForPretraining's structured names
  (``ernie.encoder.layers.0.self_attn.q_proj.weight``) and refuses anything partial.

Layouts recognised (file names as PaddleNLP 2.8.1 writes and reads them,
``paddlenlp/utils/env.py`` and ``transformers/model_utils.py``):

=====================  ==============================================================================
``save_pretrained``    ``config.json`` + ``model_state.pdparams`` (or ``model.safetensors``, or the
                       sharded ``model_state.pdparams.index.json`` / ``model.safetensors.index.json``
                       with ``model_state-0000k-of-0000n.pdparams`` / ``model-0000k-of-0000n.safetensors``),
                       ``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``
``paddlenlp_cache``    ``<PPNLP_HOME>/models/<name>/``: PaddleNLP 2.8.1 caches the weights of a
                       built-in name as ``model_state.pdparams`` (``resolve_file_path`` renames any
                       ``*.pdparams`` URL to that) and writes no config (built-in configs are a dict
                       in ``ernie/configuration.py``); older releases kept the URL's file name
                       (``ernie_v1_chn_base.pdparams``) and sometimes ``model_config.json``
``snapshot``           this project's ``<run>/snapshots/model_<step>/`` (save_pretrained layout)
``converted``          this project's conversion output (``convert_report.json`` beside it)
``checkpoint``         this project's ``checkpoints/step_<N>/`` (config in ``trainer_state.json``)
``pretrained``         ``python -m ernie_cluster pretrained`` output (``MANIFEST.json``)
``static_vars``        the reference scripts' ``model_last/static_vars.pdparams`` (generated
                       variable names, mapped by rebuilding the static program)
=====================  ==============================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from data_tools.vocab import tokens_sha256

from .train.ckpt_names import MANIFEST_FILE as MANIFEST_NAME, STATE_FILE as TRAINER_STATE_NAME  # one spelling

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
CONVERT_REPORT_NAME = "convert_report.json"

# Weight files in the order PaddleNLP 2.8.1's `_resolve_model_file_path` prefers them in a directory.
WEIGHT_CANDIDATES: Tuple[Tuple[str, str], ...] = (
    (SAFE_WEIGHTS_INDEX_NAME, "safetensors_sharded"),
    (SAFE_WEIGHTS_NAME, "safetensors"),
    (PADDLE_WEIGHTS_INDEX_NAME, "pdparams_sharded"),
    (PADDLE_WEIGHTS_NAME, "pdparams"),
)

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

REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
_CONFIG_DROP = ("architectures", "paddlenlp_version", "init_class", "model_type", "dtype", "transformers_version")

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


# ---------------------------------------------------------------------------
# small helpers (paddle-free)
# ---------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise WeightsError(f"{path} is not readable JSON ({exc}); fix or regenerate it") from None


def clean_config(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A config file's model arguments (the very old ``init_args`` layout flattened, bookkeeping keys dropped)."""
    if "init_args" in data and isinstance(data["init_args"], list) and data["init_args"]:
        first = data["init_args"][0]
        data = first.get("init_args", [first])[0] if isinstance(first, dict) and "init_args" in first else first
    return {k: v for k, v in dict(data).items() if not str(k).startswith("_") and k not in _CONFIG_DROP}


def check_config(config: Mapping[str, Any], origin: str) -> None:
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise WeightsError(f"{origin}: the config lacks {', '.join(missing)}; it does not describe an ERNIE model")
    bad = [k for k in REQUIRED_CONFIG_KEYS
           if not isinstance(config[k], int) or isinstance(config[k], bool) or config[k] <= 0]
    if bad:
        raise WeightsError(f"{origin}: {', '.join(f'{k}={config[k]!r}' for k in bad)} must be positive integers")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise WeightsError(f"{origin}: hidden_size {config['hidden_size']} is not divisible by "
                           f"num_attention_heads {config['num_attention_heads']}")


def read_vocab_tokens(path: Path) -> List[str]:
    """One token per line, the line number is the id (paddlenlp's ``Vocab.load_vocabulary`` rule)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        raise WeightsError(f"vocab file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"vocab file {path}: cannot read it ({exc})") from None
    if not tokens:
        raise WeightsError(f"vocab file {path} is empty")
    return tokens


def vocab_digest(path: Path) -> str:
    """sha256 of the token list ('\\n'.join(tokens), UTF-8): equal for files with the same token -> id map.

    The same definition must be used where a corpus records its vocab (``vocab_sha256`` in ``_idx.npz``).
    """
    return tokens_sha256(read_vocab_tokens(path))


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at line {i + 1}: {x!r} vs {y!r}"
    return f"one has {len(a)} tokens, the other {len(b)}"


def safetensors_header(path: Path) -> Dict[str, Any]:
    """Tensor names -> {dtype, shape} from a .safetensors header (8-byte length + JSON), without loading data."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise WeightsError(f"{path}: too short for a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1024 * 1024:
                raise WeightsError(f"{path}: implausible safetensors header length {n}")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise WeightsError(f"{path}: not a safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    return header


# ---------------------------------------------------------------------------
# the model directory
# ---------------------------------------------------------------------------


@dataclass
class ModelSource:
    """A recognised model directory: where the weights, config and vocab are, and what they say."""

    path: Path
    # save_pretrained | paddlenlp_cache | snapshot | converted | checkpoint | pretrained | static_vars
    layout: str
    weights_format: str             # pdparams | pdparams_sharded | safetensors | safetensors_sharded | static_vars
    weight_files: Tuple[Path, ...]  # the tensor files, in load order
    config: Dict[str, Any]
    config_origin: str              # the file the config came from, or "built-in <name>"
    config_file: Optional[Path] = None
    index_file: Optional[Path] = None
    vocab_file: Optional[Path] = None
    vocab_size: Optional[int] = None   # lines of vocab_file
    tokenizer_files: Tuple[Path, ...] = ()
    manifest_file: Optional[Path] = None
    builtin_name: Optional[str] = None
    ignored_files: Tuple[str, ...] = ()  # other weight files PaddleNLP's preference order passes over
    notes: Tuple[str, ...] = ()

    @property
    def weights_display(self) -> str:
        if self.index_file is not None:
            return f"{self.index_file} ({len(self.weight_files)} shards)"
        return ", ".join(str(f) for f in self.weight_files)

    def describe(self) -> str:
        parts = [f"{self.path}: {self.layout} layout, weights {self.weights_display} ({self.weights_format})",
                 f"config from {self.config_origin} (vocab_size {self.config.get('vocab_size')}, hidden "
                 f"{self.config.get('hidden_size')}, {self.config.get('num_hidden_layers')} layers)"]
        if self.vocab_file is not None:
            parts.append(f"vocab {self.vocab_file} ({self.vocab_size} tokens)")
        else:
            parts.append("no vocab.txt")
        return "; ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "path": str(self.path), "layout": self.layout, "weights_format": self.weights_format,
            "weight_files": [str(f) for f in self.weight_files],
            "index_file": str(self.index_file) if self.index_file else None,
            "config_origin": self.config_origin, "config": dict(self.config),
            "vocab_file": str(self.vocab_file) if self.vocab_file else None, "vocab_size": self.vocab_size,
            "tokenizer_files": [str(f) for f in self.tokenizer_files],
            "manifest_file": str(self.manifest_file) if self.manifest_file else None,
            "builtin_name": self.builtin_name, "ignored_files": list(self.ignored_files), "notes": list(self.notes),
        }


def _shards_from_index(index_file: Path) -> Tuple[Path, ...]:
    data = _read_json(index_file)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index_file}: no 'weight_map' (tensor name -> shard file); not a sharded-weights index")
    shards: List[str] = []
    for shard in weight_map.values():
        if shard not in shards:
            shards.append(shard)
    missing = [s for s in shards if not (index_file.parent / s).is_file()]
    if missing:
        raise WeightsError(f"{index_file} lists shard file(s) that are missing: {', '.join(missing)}")
    return tuple(index_file.parent / s for s in shards)


def _static_prefix(path: Path) -> Optional[Path]:
    """The reference's static checkpoint prefix (``<dir>/static_vars``) when ``static_vars.pdparams`` is there."""
    if path.is_dir():
        if (path / (STATIC_VARS + STATIC_PARAMS_SUFFIX)).is_file():
            return path / STATIC_VARS
        if (path / STATIC_VARS).is_dir():
            raise WeightsError(
                f"{path / STATIC_VARS} is a save_persistables directory (the reference writes one with sharding); "
                f"only the prefix form {STATIC_VARS}{STATIC_PARAMS_SUFFIX} (paddle.static.save) can be mapped")
        return None
    if Path(str(path) + STATIC_PARAMS_SUFFIX).is_file():
        return path
    if path.name == STATIC_VARS + STATIC_PARAMS_SUFFIX and path.is_file():
        return path.with_name(STATIC_VARS)
    return None


def _static_config_name(directory: Path) -> Optional[str]:
    """`model_name` from the reference's model_last/config.yml, if it is there."""
    f = directory / STATIC_CONFIG_YML
    if not f.is_file():
        return None
    try:
        import yaml

        data = yaml.safe_load(f.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - a damaged side file only loses the hint
        return None
    name = data.get("model_name") if isinstance(data, dict) else None
    return str(name) if name else None


def _classify(directory: Path, weights_format: str, has_config_file: bool) -> str:
    if weights_format == "static_vars":
        return "static_vars"
    if (directory / TRAINER_STATE_NAME).is_file() and (directory / MANIFEST_NAME).is_file():
        return "checkpoint"  # step_<N>, or the model_last link to one
    if (directory / CONVERT_REPORT_NAME).is_file():
        return "converted"
    if directory.parent.name == "snapshots" and re.match(r"^model_\d+$", directory.name):
        return "snapshot"
    manifest = directory / MANIFEST_NAME
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text(encoding="utf-8")).get("kind") == "pretrained":
                return "pretrained"
        except (OSError, ValueError, AttributeError):
            pass
    if directory.name in BUILTIN_CONFIGS and (not has_config_file or
                                             (directory / LEGACY_CACHE_WEIGHTS[directory.name]).is_file()):
        return "paddlenlp_cache"
    return "save_pretrained"


def _find_config(directory: Path, layout: str, config: Optional[Mapping[str, Any]]
                 ) -> Tuple[Optional[Dict[str, Any]], Optional[Path], str, Optional[str], List[str]]:
    """(config, config file, origin, built-in name it came from, notes); config None when there is none."""
    notes: List[str] = []
    for fname in CONFIG_NAMES:  # PaddleNLP 2.8's order
        f = directory / fname
        if f.is_file():
            data = _read_json(f)
            if not isinstance(data, dict):
                raise WeightsError(f"{f}: expected a JSON object with the model's configuration")
            return clean_config(data), f, str(f), None, notes
    if layout == "checkpoint":
        state_file = directory / TRAINER_STATE_NAME
        state = _read_json(state_file)
        if isinstance(state, dict) and isinstance(state.get("model_config"), dict):
            return clean_config(state["model_config"]), state_file, f"{state_file} (model_config)", None, notes
    name = directory.name if directory.name in BUILTIN_CONFIGS else None
    if layout == "static_vars" and name is None:
        named = _static_config_name(directory)
        if named in BUILTIN_CONFIGS:
            name = named
            notes.append(f"config: {directory / STATIC_CONFIG_YML} names the built-in {named}")
    if name is not None:
        return dict(BUILTIN_CONFIGS[name]), None, f"built-in {name}", name, notes
    if config is not None:
        return clean_config(config), None, "the caller's config", None, notes
    return None, None, "", None, notes


def model_dir_config(path: str | os.PathLike, *,
                     config: Optional[Mapping[str, Any]] = None) -> Tuple[Dict[str, Any], str]:
    """(config, where it came from) of a model directory, whether or not it holds weights; not checked.

    Paddle-free; for the spec's shape checks. Raises WeightsError when there is no config or it is unreadable.
    """
    p = Path(path).expanduser()
    prefix = not p.is_dir() and Path(str(p) + STATIC_PARAMS_SUFFIX).is_file()
    directory = p.parent if prefix else p
    if not directory.is_dir():
        raise WeightsError(f"model directory {directory} does not exist")
    has_weights = any((directory / n).is_file() for n, _ in WEIGHT_CANDIDATES)
    static = prefix or (not has_weights and (directory / (STATIC_VARS + STATIC_PARAMS_SUFFIX)).is_file())
    layout = _classify(directory, "static_vars" if static else "", any((directory / n).is_file() for n in CONFIG_NAMES))
    cfg, _, origin, _, _ = _find_config(directory, layout, config)
    if cfg is None:
        raise WeightsError(f"missing config: {directory} has no {' or '.join(CONFIG_NAMES)} (and its name is not a "
                           f"built-in model), so it is not a model directory")
    return cfg, origin


def resolve_model_dir(path: str | os.PathLike, *, config: Optional[Mapping[str, Any]] = None,
                      check: bool = True) -> ModelSource:
    """Recognise a model directory (or a reference ``static_vars`` prefix) and check its files. Paddle-free.

    `config` is used only when the directory carries none (a reference ``model_last`` whose
    ``config.yml`` names no built-in model). Raises WeightsError naming the file and the problem:
    no weights, a missing shard, no config, and with `check` (the default; the spec, which reports
    shape problems itself, passes False) a config without the ERNIE keys or a vocab larger than the
    config's ``vocab_size``.
    """
    p = Path(path).expanduser()
    static: Optional[Path] = None
    if p.is_dir():
        directory = p
    elif Path(str(p) + STATIC_PARAMS_SUFFIX).is_file() or (p.is_file() and p.name == STATIC_VARS + STATIC_PARAMS_SUFFIX):
        static = _static_prefix(p)  # a reference static checkpoint named by its prefix, as its scripts do
        directory = static.parent
    elif not p.exists():
        raise WeightsError(f"model directory {p} does not exist")
    else:
        raise WeightsError(f"{p} is a file; give the model directory that holds it")

    weight_files: Tuple[Path, ...] = ()
    index_file: Optional[Path] = None
    weights_format = ""
    ignored: List[str] = []
    builtin_name = directory.name if directory.name in BUILTIN_CONFIGS else None
    candidates = [(n, f) for n, f in WEIGHT_CANDIDATES]
    if builtin_name:
        candidates.append((LEGACY_CACHE_WEIGHTS[builtin_name], "pdparams"))
    for fname, fmt in candidates:
        f = directory / fname
        if not f.is_file():
            continue
        if weights_format or static is not None:
            ignored.append(fname)
            continue
        weights_format = fmt
        if fname.endswith(".index.json"):
            index_file = f
            weight_files = _shards_from_index(f)
        else:
            weight_files = (f,)
    if static is None and not weights_format:
        static = _static_prefix(directory)
    if static is not None:
        weights_format, weight_files = "static_vars", (Path(str(static) + STATIC_PARAMS_SUFFIX),)
    elif (directory / (STATIC_VARS + STATIC_PARAMS_SUFFIX)).is_file():
        ignored.append(STATIC_VARS + STATIC_PARAMS_SUFFIX)
    if not weights_format:
        looked = [n for n, _ in candidates] + [STATIC_VARS + STATIC_PARAMS_SUFFIX]
        raise WeightsError(f"{directory} holds no weights: none of {', '.join(looked)} is there")

    layout = _classify(directory, weights_format, any((directory / n).is_file() for n in CONFIG_NAMES))
    cfg, config_file, origin, builtin_from_config, notes = _find_config(directory, layout, config)
    if cfg is None:
        where = f"{' or '.join(CONFIG_NAMES)}"
        if layout == "static_vars":
            where += f", nor a built-in model name in {STATIC_CONFIG_YML}"
        raise WeightsError(f"missing config: {directory} has no {where}; its weights {weight_files[0].name} "
                           f"cannot be checked without the model's shape")
    builtin_name = builtin_name or builtin_from_config
    if check:
        check_config(cfg, origin)

    vocab_file = directory / VOCAB_NAME if (directory / VOCAB_NAME).is_file() else None
    vocab_size = None
    if vocab_file is not None:
        vocab_size = len(read_vocab_tokens(vocab_file))
        if check and vocab_size > int(cfg.get("vocab_size", vocab_size)):
            raise WeightsError(f"vocab size mismatch: {vocab_file} has {vocab_size} tokens but {origin} says "
                               f"vocab_size {cfg['vocab_size']}; the vocab does not belong to these weights")
    tokenizer_files = tuple(directory / n for n in TOKENIZER_FILES if (directory / n).is_file())
    manifest = directory / MANIFEST_NAME if (directory / MANIFEST_NAME).is_file() else None
    if ignored:
        used = index_file.name if index_file is not None else weight_files[0].name
        notes.append(f"loading {used}; also present, not used: {', '.join(ignored)}")
    return ModelSource(path=directory, layout=layout, weights_format=weights_format, weight_files=weight_files,
                       config=cfg, config_origin=origin, config_file=config_file, index_file=index_file,
                       vocab_file=vocab_file, vocab_size=vocab_size, tokenizer_files=tokenizer_files,
                       manifest_file=manifest, builtin_name=builtin_name, ignored_files=tuple(ignored),
                       notes=tuple(notes))


# ---------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------

CORPUS_VOCAB_KEY = "vocab_sha256"  # an array in <prefix>_idx.npz (written by data_tools.create_pretraining_data)


@dataclass
class VocabCheck:
    vocab_file: Path
    sha256: str
    size: int
    model_vocab_file: Optional[Path]
    corpora: List[Tuple[str, str]] = field(default_factory=list)  # (idx file, "match" | "unrecorded")

    def summary(self) -> str:
        unrec = [c for c, s in self.corpora if s == "unrecorded"]
        text = f"vocab {self.vocab_file} ({self.size} tokens, sha256 {self.sha256[:12]})"
        if self.corpora:
            text += f"; corpus: {len(self.corpora) - len(unrec)} match"
            if unrec:
                text += f", {len(unrec)} record no vocab ({', '.join(unrec)})"
        return text


def corpus_idx_files(prefix: str | os.PathLike) -> List[Path]:
    """``<prefix>_idx.npz``, or for a directory every ``<name>_idx.npz`` with its ``_ids.npy`` (name order)."""
    p = Path(prefix)
    if p.is_dir():
        return [f for f in sorted(p.glob("*_idx.npz")) if Path(str(f)[: -len("_idx.npz")] + "_ids.npy").is_file()]
    return [Path(f"{p}_idx.npz")]


def corpus_vocab_digest(idx_file: Path) -> Optional[str]:
    """The vocab digest a tokenized corpus recorded (None when it recorded none)."""
    if not idx_file.is_file():
        raise WeightsError(f"corpus index {idx_file} does not exist")
    import numpy as np

    try:
        with np.load(idx_file, allow_pickle=False) as z:
            if CORPUS_VOCAB_KEY not in z.files:
                return None
            return str(np.asarray(z[CORPUS_VOCAB_KEY]).reshape(-1)[0])
    except (OSError, ValueError) as exc:
        raise WeightsError(f"corpus index {idx_file}: cannot read it ({exc})") from None


def check_vocab(model_source: Optional[ModelSource], vocab_file: Optional[str | os.PathLike] = None,
                corpus_prefix: Optional[str | os.PathLike] = None) -> VocabCheck:
    """Which vocab the run uses, refusing mismatches. Paddle-free (numpy only for a corpus).

    * default: the model directory's vocab.txt;
    * a given `vocab_file` whose tokens differ from the model directory's vocab.txt is refused,
      naming both files (the same tokens in another file are fine);
    * a vocab larger than the model's ``vocab_size`` is refused;
    * each tokenized corpus under `corpus_prefix` that recorded its vocab must match it
      (a corpus tokenized before the digest was recorded is reported as "unrecorded").
    """
    model_vocab = model_source.vocab_file if model_source is not None else None
    chosen = Path(vocab_file) if vocab_file is not None else model_vocab
    if chosen is None:
        where = f"{model_source.path} has no {VOCAB_NAME}" if model_source is not None else "no model directory"
        raise WeightsError(f"no vocab: {where}; set data.vocab_file to the vocab the model was trained with")
    tokens = read_vocab_tokens(chosen)
    digest = tokens_sha256(tokens)
    if model_vocab is not None and vocab_file is not None and Path(vocab_file).resolve() != model_vocab.resolve():
        model_tokens = read_vocab_tokens(model_vocab)
        if model_tokens != tokens:
            raise WeightsError(
                f"vocab mismatch: {chosen} ({len(tokens)} tokens) differs from the model's {model_vocab} "
                f"({len(model_tokens)} tokens), {_first_difference(tokens, model_tokens)}; token ids would "
                f"point at the wrong embeddings. Use the model's vocab (drop data.vocab_file) or a model trained with it")
    model_vocab_size = model_source.config.get("vocab_size") if model_source is not None else None
    if isinstance(model_vocab_size, int) and len(tokens) > model_vocab_size:
        raise WeightsError(f"vocab size mismatch: {chosen} has {len(tokens)} tokens but {model_source.config_origin} "
                           f"says vocab_size {model_source.config['vocab_size']}")
    result = VocabCheck(vocab_file=chosen, sha256=digest, size=len(tokens), model_vocab_file=model_vocab)
    if corpus_prefix is not None:
        for idx in corpus_idx_files(corpus_prefix):
            recorded = corpus_vocab_digest(idx)
            if recorded is None:
                result.corpora.append((str(idx), "unrecorded"))
            elif recorded != digest:
                raise WeightsError(f"vocab mismatch: the corpus {idx} was tokenized with a vocab of sha256 "
                                   f"{recorded[:12]}..., not {chosen} (sha256 {digest[:12]}...); re-tokenize it "
                                   f"with {chosen} or use the vocab it was built with")
            else:
                result.corpora.append((str(idx), "match"))
    return result


# ---------------------------------------------------------------------------
# tensor names and shapes without paddle (what `validate` can check on a login node)
# ---------------------------------------------------------------------------

# ErnieConfig's own defaults (paddlenlp 2.8.1) for the keys the parameter shapes depend on.
_SHAPE_DEFAULTS = {"intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 16,
                   "use_task_id": False, "task_type_vocab_size": 3}


def ernie_pretraining_shapes(config: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
    """Structured name -> shape of every ErnieForPretraining parameter (paddlenlp 2.8.1), tied aliases included.

    Paddle-free; tests/test_weights.py compares it with paddlenlp's own state_dict.
    """
    c = {**_SHAPE_DEFAULTS, **{k: v for k, v in dict(config).items() if v is not None}}
    v, h, i = int(c["vocab_size"]), int(c["hidden_size"]), int(c["intermediate_size"])
    out: Dict[str, Tuple[int, ...]] = {
        "ernie.embeddings.word_embeddings.weight": (v, h),
        "ernie.embeddings.position_embeddings.weight": (int(c["max_position_embeddings"]), h),
    }
    if int(c["type_vocab_size"]) > 0:
        out["ernie.embeddings.token_type_embeddings.weight"] = (int(c["type_vocab_size"]), h)
    if c["use_task_id"]:
        out["ernie.embeddings.task_type_embeddings.weight"] = (int(c["task_type_vocab_size"]), h)
    out["ernie.embeddings.layer_norm.weight"] = (h,)
    out["ernie.embeddings.layer_norm.bias"] = (h,)
    for n in range(int(c["num_hidden_layers"])):
        p = f"ernie.encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{p}self_attn.{proj}.weight"] = (h, h)
            out[f"{p}self_attn.{proj}.bias"] = (h,)
        out[f"{p}linear1.weight"], out[f"{p}linear1.bias"] = (h, i), (i,)
        out[f"{p}linear2.weight"], out[f"{p}linear2.bias"] = (i, h), (h,)
        for norm in ("norm1", "norm2"):
            out[f"{p}{norm}.weight"], out[f"{p}{norm}.bias"] = (h,), (h,)
    out["ernie.pooler.dense.weight"], out["ernie.pooler.dense.bias"] = (h, h), (h,)
    out["cls.predictions.decoder_bias"] = (v,)
    out["cls.predictions.transform.weight"], out["cls.predictions.transform.bias"] = (h, h), (h,)
    out["cls.predictions.layer_norm.weight"], out["cls.predictions.layer_norm.bias"] = (h,), (h,)
    out["cls.predictions.decoder.weight"], out["cls.predictions.decoder.bias"] = (v, h), (v,)
    out["cls.seq_relationship.weight"], out["cls.seq_relationship.bias"] = (h, 2), (2,)
    return out


class _Unsupported(Exception):
    """The file holds something the shape reader does not know; only the trainer (paddle.load) can read it."""


class _ArrayShape:
    """Stands in for a pickled numpy array: keeps its shape, drops its data."""

    def __init__(self, *_args: Any) -> None:
        self.shape: Optional[Tuple[int, ...]] = None

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw data)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)):
            raise _Unsupported("an array with an unexpected pickled state")
        self.shape = tuple(int(d) for d in state[1])


class _DType:
    def __init__(self, *_args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _reconstruct(_cls: Any, *_args: Any) -> _ArrayShape:
    return _ArrayShape()


def _pickled_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Tensor name -> shape of a paddle.save'd state dict (a pickle of numpy arrays), without numpy or paddle.

    Only numpy's array and dtype reconstructors are allowed (anything else raises _Unsupported, and nothing
    in the file is ever called); the array bytes are read and dropped.
    """
    import collections
    import pickle

    allowed = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): _ArrayShape, ("numpy", "dtype"): _DType,
               ("collections", "OrderedDict"): collections.OrderedDict}

    class _Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return allowed[module, name]
            except KeyError:
                raise _Unsupported(f"{module}.{name}") from None

    try:
        with open(path, "rb") as f:
            state = _Reader(f).load()
    except _Unsupported:
        raise
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read it ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - truncated or not a pickle at all
        raise WeightsError(f"{path}: not a readable paddle.save state dict ({type(exc).__name__}: {exc}); "
                           f"the file is damaged or incomplete: copy or fetch it again") from None
    if not isinstance(state, dict):
        raise _Unsupported(f"a {type(state).__name__}")
    state.pop("StructuredToParameterName@@", None)
    out = {}
    for key, value in state.items():
        if not isinstance(value, _ArrayShape) or value.shape is None:
            raise _Unsupported(f"{key} is not an array")
        out[str(key)] = value.shape
    return out


def tensor_shapes(source: ModelSource) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Name -> shape of every tensor in the source's weight files, read without paddle; None when the
    format needs paddle to be read (static_vars, or a pickle holding more than numpy arrays)."""
    if source.weights_format == "static_vars":
        return None
    out: Dict[str, Tuple[int, ...]] = {}
    for f in source.weight_files:
        try:
            if source.weights_format.startswith("safetensors"):
                part = {k: tuple(int(d) for d in v.get("shape", ())) for k, v in safetensors_header(f).items()
                        if isinstance(v, dict)}
            else:
                part = _pickled_shapes(f)
        except _Unsupported:
            return None
        out.update(part)
    return out


def shape_problems(source: ModelSource, expected: Mapping[str, Sequence[int]], *,
                   allow_missing_heads: bool = False,
                   shapes: Optional[Mapping[str, Sequence[int]]] = None) -> List[str]:
    """What `load_starting_weights` would refuse, judged from names and shapes alone (paddle-free).

    The same rules: a tensor maps by its name or with the ``ernie.`` prefix added, tied aliases fill each
    other, every encoder tensor must be there with its shape, heads too unless `allow_missing_heads`, and
    no tensor may map to nothing. Returns [] when the files cannot be read without paddle (the trainer
    checks them before the first step).
    """
    if shapes is None:
        shapes = tensor_shapes(source)
    if shapes is None:
        return []
    exp = {k: tuple(int(d) for d in v) for k, v in expected.items()}
    where = source.index_file or (source.weight_files[0] if len(source.weight_files) == 1 else source.path)
    found: Dict[str, Tuple[int, ...]] = {}
    origin: Dict[str, str] = {}
    unused = []
    for key, shape in shapes.items():
        name = key if key in exp else ENCODER_PREFIX + key if ENCODER_PREFIX + key in exp else None
        if name is None:
            if key not in LEGACY_TIED_KEYS:
                unused.append(key)
            continue
        found.setdefault(name, tuple(shape))
        origin.setdefault(name, key)
    for alias, canon in ERNIE_TIES.items():
        if alias in exp and canon in exp:
            if alias in found and canon not in found:
                found[canon], origin[canon] = found[alias], origin[alias]
            elif canon in found and alias not in found:
                found[alias], origin[alias] = found[canon], origin[canon]
    problems = []
    bad = [f"{origin[n]}: file {found[n]} vs model {exp[n]}" for n in sorted(found) if found[n] != exp[n]]
    if bad:
        problems.append(f"{len(bad)} shape mismatch(es) in {where} (config {source.config_origin}): "
                        + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    missing = sorted(set(exp) - set(found))
    encoder = [m for m in missing if not m.startswith(HEADS_PREFIX)]
    heads = [m for m in missing if m.startswith(HEADS_PREFIX)]
    if encoder:
        problems.append(f"{len(encoder)} encoder tensor(s) missing from {where}: " + ", ".join(encoder[:10])
                        + (" ..." if len(encoder) > 10 else ""))
    if heads and not allow_missing_heads:
        problems.append(f"{len(heads)} pretraining head tensor(s) missing from {where}: {', '.join(heads)}; set "
                        f"model.allow_missing_heads: true to start these from a fresh initialisation")
    if unused:
        problems.append(f"{len(unused)} tensor(s) in {where} map to no parameter of ErnieForPretraining: "
                        + ", ".join(sorted(unused)[:10]) + (" ..." if len(unused) > 10 else ""))
    return problems


# ---------------------------------------------------------------------------
# checksum and report
# ---------------------------------------------------------------------------


def tensor_checksum(weights: Mapping[str, Any]) -> str:
    """sha256 over sorted names, each name's UTF-8 bytes then the tensor's C-order bytes.

    The same definition as the trainer's `param_digest`: after loading, the engine's digest equals
    this checksum when no head was initialised fresh. About 0.25 s for 400 MB.
    """
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode("utf-8"))
        arr = np.ascontiguousarray(weights[name])
        h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.hexdigest()


@dataclass
class StartingWeightsReport:
    path: str
    layout: str
    weights_format: str
    files: List[str]
    config_origin: str
    n_tensors: int            # distinct tensors taken from the source
    n_parameters: int         # elements in them (tied aliases counted once)
    checksum: str             # tensor_checksum over every structured name loaded from the source
    fresh_heads: List[str] = field(default_factory=list)
    mapping: str = "structured names"
    cast: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        fresh = f"{len(self.fresh_heads)} head tensors initialised fresh" if self.fresh_heads else "no fresh heads"
        return (f"starting weights {self.path} ({self.layout}, {self.weights_format}, {self.mapping}): "
                f"{self.n_tensors} tensors, {self.n_parameters:,} parameters, sha256 {self.checksum[:16]}, {fresh}")

    def as_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "layout": self.layout, "weights_format": self.weights_format, "files": list(self.files),
                "config_origin": self.config_origin, "n_tensors": self.n_tensors, "n_parameters": self.n_parameters,
                "checksum": self.checksum, "fresh_heads": list(self.fresh_heads), "mapping": self.mapping,
                "cast": list(self.cast), "notes": list(self.notes), "seconds": self.seconds}

    def text(self) -> str:
        """Markdown for VisualDL's text tab."""
        lines = [f"**starting weights** `{self.path}`", "",
                 f"- layout: {self.layout} ({self.weights_format}, {self.mapping})",
                 f"- files: {', '.join(f'`{f}`' for f in self.files)}",
                 f"- config: {self.config_origin}",
                 f"- tensors: {self.n_tensors}, parameters: {self.n_parameters:,}",
                 f"- sha256: `{self.checksum}`",
                 f"- heads initialised fresh: {', '.join(self.fresh_heads) if self.fresh_heads else 'none'}"]
        lines += [f"- cast to float32: {', '.join(self.cast)}"] if self.cast else []
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# paddle side: reading tensors and mapping them onto structured names
# ---------------------------------------------------------------------------


def _paddle_load(path: Path) -> Dict[str, Any]:
    import numpy as np  # noqa: F401 - numpy before paddle (paddle 2.6 import-order bug)
    import paddle

    try:
        state = paddle.load(str(path), return_numpy=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise WeightsError(f"{path}: cannot load it with paddle.load ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a name -> tensor dict")
    state.pop("StructuredToParameterName@@", None)
    return state


def _safetensors_load(path: Path) -> Dict[str, Any]:
    try:
        from safetensors.numpy import load_file
    except ImportError:  # pragma: no cover - paddlenlp depends on safetensors
        raise WeightsError(f"{path}: reading safetensors needs the 'safetensors' package") from None
    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{path}: cannot read it as safetensors ({type(exc).__name__}: {exc})") from None


def read_source_tensors(source: ModelSource) -> Dict[str, Any]:
    """Every tensor of the source as numpy arrays, under the names stored in the file(s)."""
    out: Dict[str, Any] = {}
    for f in source.weight_files:
        part = _safetensors_load(f) if source.weights_format.startswith("safetensors") else _paddle_load(f)
        dup = sorted(set(part) & set(out))
        if dup:
            raise WeightsError(f"{f} repeats tensor(s) already read from another shard: {', '.join(dup[:8])}")
        out.update(part)
    return out


def _ernie_config(config: Mapping[str, Any]):
    from paddlenlp.transformers import ErnieConfig

    return ErnieConfig(**clean_config(config))


@dataclass
class StaticNameMap:
    """Generated variable name -> structured names of one way of building the program."""

    label: str
    names: Dict[str, List[str]]   # generated name -> structured names (tied ones share a variable)
    orphans: Dict[str, Tuple[int, ...]]  # parameters of the program that no structured name uses
    shapes: Dict[str, Tuple[int, ...]]


def _build_static(build: Callable[[], Dict[str, Any]]) -> Tuple[Dict[str, str], Dict[str, Tuple[int, ...]]]:
    """Run `build` (returns structured name -> parameter) in a fresh static program with fresh name counters."""
    import numpy as np  # noqa: F401
    import paddle

    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            params = build()
            names = {k: v.name for k, v in params.items()}
            all_params = {p.name: tuple(int(d) for d in p.shape) for p in main.all_parameters()}
        return names, all_params
    finally:
        if was_dynamic:
            paddle.disable_static()


def static_name_maps(config: Mapping[str, Any]) -> List[StaticNameMap]:
    """How ErnieForPretraining's generated names map to structured names, in the two head layouts PaddleNLP had.

    1. the installed PaddleNLP's ErnieForPretraining (2.8.1: the MLM decoder is a TransposedLinear whose own
       weight is replaced by the word embedding: that weight is an orphan parameter of the program);
    2. the older heads the reference scripts were written against: ErnieLMPredictionHead took the embedding
       as its decoder weight and created ``decoder_bias`` itself (``ernie_lm_prediction_head_0.b_0``), so the
       sentence-order head's linear comes one index earlier.
    The encoder is built by the same ErnieModel in both, so its names agree.
    """
    from paddle import nn
    from paddlenlp.transformers import ErnieForPretraining, ErnieModel

    cfg = _ernie_config(config)

    def current():
        return dict(ErnieForPretraining(cfg).state_dict())

    class ErniePretrainingHeads(nn.Layer):  # the class names matter: they make the generated bias name
        def __init__(self):
            super().__init__()
            self.predictions = ErnieLMPredictionHead()
            self.seq_relationship = nn.Linear(cfg.hidden_size, 2)

    class ErnieLMPredictionHead(nn.Layer):
        def __init__(self):
            super().__init__()
            self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.layer_norm = nn.LayerNorm(cfg.hidden_size)
            self.decoder_bias = self.create_parameter(shape=[cfg.vocab_size], dtype="float32", is_bias=True)

    def legacy():
        encoder = ErnieModel(cfg)
        heads = ErniePretrainingHeads()
        out = {ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()}
        out.update({"cls." + k: v for k, v in heads.state_dict().items()})
        return out

    maps = []
    for label, build in (("static program of the installed PaddleNLP", current),
                         ("static program with the older PaddleNLP heads", legacy)):
        names, params = _build_static(build)
        by_var: Dict[str, List[str]] = {}
        for sname, vname in names.items():
            by_var.setdefault(vname, []).append(sname)
        orphans = {v: s for v, s in params.items() if v not in by_var}
        maps.append(StaticNameMap(label=label, names=by_var, orphans=orphans, shapes=params))
    return maps


def map_static_names(raw: Mapping[str, Any], config: Mapping[str, Any],
                     file: Path) -> Tuple[Dict[str, Any], str, List[str]]:
    """Generated names -> structured names; fails on any name no program layout explains (naming them)."""
    tried = []
    for m in static_name_maps(config):
        unmapped = sorted(k for k in raw if k not in m.names and k not in m.orphans)
        unmapped += sorted(f"{k} (file {tuple(raw[k].shape)} vs program {m.shapes[k]})" for k in raw
                           if k in m.shapes and tuple(raw[k].shape) != m.shapes[k])
        if unmapped:
            tried.append((m.label, unmapped))
            continue
        out: Dict[str, Any] = {}
        for vname, value in raw.items():
            for sname in m.names.get(vname, ()):
                out[sname] = value
        ignored = sorted(k for k in raw if k in m.orphans)
        notes = [f"{file.name}: ignored {', '.join(ignored)} (parameter(s) of the program no structured name uses: "
                 f"the MLM decoder's own weight, replaced by the tied word embedding)"] if ignored else []
        return out, m.label, notes
    best = min(tried, key=lambda t: len(t[1]))
    detail = "; ".join(f"{label}: {len(u)} unmapped" for label, u in tried)
    raise WeightsError(f"{file}: {len(best[1])} variable(s) match no parameter of the ErnieForPretraining "
                       f"program built from the config, by name or by shape ({detail}): {', '.join(best[1][:20])}"
                       f"{' ...' if len(best[1]) > 20 else ''}. The checkpoint was written by a different model or "
                       f"config, or by a program built after other layers in the same process")


def load_starting_weights(source: ModelSource, expected_shapes: Mapping[str, Sequence[int]], *,
                          allow_missing_heads: bool = False,
                          fresh: Optional[Callable[[], Mapping[str, Any]] | Mapping[str, Any]] = None,
                          ties: Mapping[str, str] = ERNIE_TIES, ignore_unused: bool = False,
                          verify: bool = True) -> Tuple[Dict[str, Any], StartingWeightsReport]:
    """Read `source` and return (weights by structured name, report), or raise WeightsError listing every problem.

    * every encoder tensor (``ernie.*``) of `expected_shapes` must come from the source, with its shape;
    * ErnieModel-only files (keys without ``ernie.``) are mapped onto ``ernie.*``; static_vars files
      through the rebuilt program; tied aliases (ERNIE_TIES) are filled from each other and must agree;
    * pretraining heads (``cls.*``) the source lacks are refused unless `allow_missing_heads`; then they
      are taken from `fresh` (the model's own initialisation, a mapping or a callable) when given, and
      listed in the report either way;
    * a source tensor that maps to no parameter is refused unless `ignore_unused`;
    * a MANIFEST.json beside the weights is verified first (`verify`).
    """
    import time

    import numpy as np

    t0 = time.time()
    if verify and source.manifest_file is not None:
        from .pretrained import ManifestError, verify_manifest

        try:
            verify_manifest(source.path)
        except ManifestError as exc:
            raise WeightsError(str(exc)) from None
    expected = {k: tuple(int(d) for d in v) for k, v in expected_shapes.items()}
    raw = read_source_tensors(source)
    where = source.index_file or (source.weight_files[0] if len(source.weight_files) == 1 else source.path)
    notes: List[str] = list(source.notes)
    mapping = "structured names"
    if source.weights_format == "static_vars":
        raw, mapping, extra = map_static_names(raw, source.config, source.weight_files[0])
        notes += extra

    problems: List[str] = []
    out: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    unused: List[str] = []
    legacy_tied: Dict[str, Any] = {}
    prefixed = 0
    for key, value in raw.items():
        if key in expected:
            name = key
        elif ENCODER_PREFIX + key in expected:
            name, prefixed = ENCODER_PREFIX + key, prefixed + 1
        elif key in LEGACY_TIED_KEYS:
            legacy_tied[key] = value
            continue
        else:
            unused.append(key)
            continue
        if name in out:
            if not np.array_equal(np.asarray(out[name]), np.asarray(value)):
                problems.append(f"{where} holds both {origin[name]} and {key} for {name}, with different values")
            continue
        out[name], origin[name] = value, key
    if prefixed:
        notes.append(f"{prefixed} tensors without the '{ENCODER_PREFIX}' prefix (an ErnieModel file) "
                     f"mapped onto {ENCODER_PREFIX}*")

    # tied parameters: one value for the alias and the canonical name
    for alias, canon in ties.items():
        if alias not in expected or canon not in expected:
            continue
        if alias in out and canon in out:
            if not np.array_equal(np.asarray(out[alias]), np.asarray(out[canon])):
                problems.append(f"{where}: {alias} and {canon} differ, but ErnieForPretraining ties them "
                                f"(one parameter); these weights do not come from an ErnieForPretraining")
        elif alias in out:
            out[canon], origin[canon] = out[alias], origin[alias]
        elif canon in out:
            out[alias], origin[alias] = out[canon], origin[canon]
    for key, value in legacy_tied.items():
        canon = LEGACY_TIED_KEYS[key]
        if canon in out and not np.array_equal(np.asarray(out[canon]), np.asarray(value)):
            problems.append(f"{where}: {key} differs from {canon}; ErnieForPretraining ties the MLM decoder "
                            f"to the word embeddings, so it cannot hold both")
        elif canon in out:
            notes.append(f"{key} (older heads' name of the tied decoder weight) equals {canon}")
        else:
            unused.append(key)

    cast: List[str] = []
    bad_shape = []
    for name in sorted(out):
        value = np.asarray(out[name])
        if tuple(value.shape) != expected[name]:
            bad_shape.append(f"{origin[name]}: file {tuple(value.shape)} vs model {expected[name]}")
            continue
        if value.dtype.kind == "f" and value.dtype != np.float32:
            cast.append(f"{name} ({value.dtype})")
            value = value.astype(np.float32)
        out[name] = value
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es) in {where} (config {source.config_origin}): "
                        + "; ".join(bad_shape))
    missing = sorted(set(expected) - set(out))
    missing_encoder = [m for m in missing if not m.startswith(HEADS_PREFIX)]
    missing_heads = [m for m in missing if m.startswith(HEADS_PREFIX)]
    if missing_encoder:
        problems.append(f"{len(missing_encoder)} encoder tensor(s) missing from {where}: {', '.join(missing_encoder)}")
    if missing_heads and not allow_missing_heads:
        problems.append(f"{len(missing_heads)} pretraining head tensor(s) missing from {where}: "
                        f"{', '.join(missing_heads)}; set model.allow_missing_heads: true to start these from a "
                        f"fresh initialisation")
    if unused and not ignore_unused:
        problems.append(f"{len(unused)} tensor(s) in {where} map to no parameter of ErnieForPretraining: "
                        + ", ".join(sorted(unused)[:20]) + (" ..." if len(unused) > 20 else ""))
    elif unused:
        notes.append(f"ignored {len(unused)} tensor(s) that map to no parameter: {', '.join(sorted(unused)[:8])}")
    if problems:
        raise WeightsError(f"starting weights {source.path} ({source.layout}) refused:\n  " + "\n  ".join(problems))

    loaded = dict(out)
    if missing_heads and fresh is not None:
        init = fresh() if callable(fresh) else fresh
        absent = [m for m in missing_heads if m not in init]
        if absent:
            raise WeightsError(f"the fresh initialisation lacks {', '.join(absent)}")
        for m in missing_heads:
            value = np.asarray(init[m])
            if tuple(value.shape) != expected[m]:
                raise WeightsError(f"fresh initialisation of {m} has shape {tuple(value.shape)}, the model {expected[m]}")
            out[m] = value
    distinct = {n: v for n, v in loaded.items() if not (n in ties and ties[n] in loaded)}
    report = StartingWeightsReport(
        path=str(source.path), layout=source.layout, weights_format=source.weights_format,
        files=[str(f) for f in ([source.index_file] if source.index_file else []) + list(source.weight_files)],
        config_origin=source.config_origin, n_tensors=len(distinct),
        n_parameters=int(sum(int(np.asarray(v).size) for v in distinct.values())),
        checksum=tensor_checksum(loaded), fresh_heads=missing_heads, mapping=mapping, cast=cast, notes=notes)
    report.seconds = round(time.time() - t0, 3)
    return out, report
