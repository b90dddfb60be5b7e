"""Recognising a model directory: its layout, its weight files, its config and its vocab (standard library only).

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

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import _find_config, _read_json, check_config
from .manifest import MANIFEST_KIND
from .names import (BUILTIN_CONFIGS, CONFIG_NAMES, CONVERT_REPORT_NAME, LEGACY_CACHE_WEIGHTS, MANIFEST_NAME,
                    STATIC_CONFIG_YML, STATIC_PARAMS_SUFFIX, STATIC_VARS, TOKENIZER_FILES, TRAINER_STATE_NAME,
                    VOCAB_NAME, WEIGHT_CANDIDATES, WeightsError)
from .vocab import read_vocab_tokens

STATIC_WEIGHTS_NAME = STATIC_VARS + STATIC_PARAMS_SUFFIX


@dataclass
class ModelSource:
    """A recognised model directory: where the weights, config and vocab are, and what they say."""

    path: Path
    # save_pretrained | paddlenlp_cache | snapshot | converted | checkpoint | pretrained | static_vars
    # (train.model builds a weightless "config" one for a resumed run)
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
    def weights_location(self) -> Path:
        """What a refusal names: the index of sharded weights, the one weight file, else the directory."""
        return self.index_file or (self.weight_files[0] if len(self.weight_files) == 1 else self.path)


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
        if (path / STATIC_WEIGHTS_NAME).is_file():
            return path / STATIC_VARS
        if (path / STATIC_VARS).is_dir():
            raise WeightsError(
                f"{path / STATIC_VARS} is a save_persistables directory (the reference writes one with sharding); "
                f"only the prefix form {STATIC_WEIGHTS_NAME} (paddle.static.save) can be mapped")
        return None
    if Path(str(path) + STATIC_PARAMS_SUFFIX).is_file():
        return path
    if path.name == STATIC_WEIGHTS_NAME and path.is_file():
        return path.with_name(STATIC_VARS)
    return None


def _has_config_file(directory: Path) -> bool:
    return any((directory / n).is_file() for n in CONFIG_NAMES)


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
            if json.loads(manifest.read_text(encoding="utf-8")).get("kind") == MANIFEST_KIND:
                return "pretrained"
        except (OSError, ValueError, AttributeError):
            pass
    if directory.name in BUILTIN_CONFIGS and (not has_config_file or
                                             (directory / LEGACY_CACHE_WEIGHTS[directory.name]).is_file()):
        return "paddlenlp_cache"
    return "save_pretrained"


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
    static = prefix or (not has_weights and (directory / STATIC_WEIGHTS_NAME).is_file())
    layout = _classify(directory, "static_vars" if static else "", _has_config_file(directory))
    cfg, _, origin, _, _ = _find_config(directory, layout, config)
    if cfg is None:
        raise WeightsError(f"missing config: {directory} has no {' or '.join(CONFIG_NAMES)} (and its name is not a "
                           f"built-in model), so it is not a model directory")
    return cfg, origin


def _locate(p: Path) -> Tuple[Path, Optional[Path]]:
    """(model directory, static_vars prefix when `p` names the reference's static checkpoint by it)."""
    if p.is_dir():
        return p, None
    if Path(str(p) + STATIC_PARAMS_SUFFIX).is_file() or (p.is_file() and p.name == STATIC_WEIGHTS_NAME):
        static = _static_prefix(p)  # a reference static checkpoint named by its prefix, as its scripts do
        return static.parent, static
    if not p.exists():
        raise WeightsError(f"model directory {p} does not exist")
    raise WeightsError(f"{p} is a file; give the model directory that holds it")


def _pick_weights(directory: Path, static: Optional[Path]
                  ) -> Tuple[str, Tuple[Path, ...], Optional[Path], List[str]]:
    """(weights format, weight files, index file, other weight files passed over), in PaddleNLP's order."""
    weight_files: Tuple[Path, ...] = ()
    index_file: Optional[Path] = None
    weights_format = ""
    ignored: List[str] = []
    candidates = list(WEIGHT_CANDIDATES)
    if directory.name in BUILTIN_CONFIGS:
        candidates.append((LEGACY_CACHE_WEIGHTS[directory.name], "pdparams"))
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
    elif (directory / STATIC_WEIGHTS_NAME).is_file():
        ignored.append(STATIC_WEIGHTS_NAME)
    if not weights_format:
        looked = [n for n, _ in candidates] + [STATIC_WEIGHTS_NAME]
        raise WeightsError(f"{directory} holds no weights: none of {', '.join(looked)} is there")
    return weights_format, weight_files, index_file, ignored


def _vocab(directory: Path, cfg: Mapping[str, Any], origin: str, check: bool) -> Tuple[Optional[Path], Optional[int]]:
    """(vocab.txt, its size); with `check`, one larger than the config's vocab_size is refused."""
    vocab_file = directory / VOCAB_NAME if (directory / VOCAB_NAME).is_file() else None
    if vocab_file is None:
        return None, None
    vocab_size = len(read_vocab_tokens(vocab_file))
    if check and vocab_size > int(cfg.get("vocab_size", vocab_size)):
        raise WeightsError(f"vocab size mismatch: {vocab_file} has {vocab_size} tokens but {origin} says "
                           f"vocab_size {cfg['vocab_size']}; the vocab does not belong to these weights")
    return vocab_file, vocab_size


def resolve_model_dir(path: str | os.PathLike, *, config: Optional[Mapping[str, Any]] = None,
                      check: bool = True) -> ModelSource:
    """Recognise a model directory (or a reference ``static_vars`` prefix) and check its files. Paddle-free.

    `config` is used only when the directory carries none (a reference ``model_last`` whose
    ``config.yml`` names no built-in model). Raises WeightsError naming the file and the problem:
    no weights, a missing shard, no config, and with `check` (the default; the spec, which reports
    shape problems itself, passes False) a config without the ERNIE keys or a vocab larger than the
    config's ``vocab_size``.
    """
    directory, static = _locate(Path(path).expanduser())
    weights_format, weight_files, index_file, ignored = _pick_weights(directory, static)
    layout = _classify(directory, weights_format, _has_config_file(directory))
    cfg, config_file, origin, builtin_from_config, notes = _find_config(directory, layout, config)
    if cfg is None:
        where = f"{' or '.join(CONFIG_NAMES)}"
        if layout == "static_vars":
            where += f", nor a built-in model name in {STATIC_CONFIG_YML}"
        raise WeightsError(f"missing config: {directory} has no {where}; its weights {weight_files[0].name} "
                           f"cannot be checked without the model's shape")
    if check:
        check_config(cfg, origin)
    vocab_file, vocab_size = _vocab(directory, cfg, origin, check)
    if ignored:
        used = index_file.name if index_file is not None else weight_files[0].name
        notes.append(f"loading {used}; also present, not used: {', '.join(ignored)}")
    builtin_name = directory.name if directory.name in BUILTIN_CONFIGS else None
    return ModelSource(path=directory, layout=layout, weights_format=weights_format, weight_files=weight_files,
                       config=cfg, config_origin=origin, config_file=config_file, index_file=index_file,
                       vocab_file=vocab_file, vocab_size=vocab_size,
                       tokenizer_files=tuple(directory / n for n in TOKENIZER_FILES if (directory / n).is_file()),
                       manifest_file=directory / MANIFEST_NAME if (directory / MANIFEST_NAME).is_file() else None,
                       builtin_name=builtin_name or builtin_from_config,
                       ignored_files=tuple(ignored), notes=tuple(notes))
