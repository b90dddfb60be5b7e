"""Which config describes a model directory, and whether it describes an ERNIE model (standard library only).

PaddleNLP 2.8's order: ``config.json``, then ``model_config.json``; then this project's checkpoint
(``trainer_state.json``'s ``model_config``); then a built-in model named by the directory (a PaddleNLP
cache) or by the reference's ``model_last/config.yml``; then the caller's config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .names import BUILTIN_CONFIGS, CONFIG_NAMES, STATIC_CONFIG_YML, TRAINER_STATE_NAME, WeightsError

REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
_CONFIG_DROP = ("architectures", "paddlenlp_version", "init_class", "model_type", "dtype", "transformers_version")

# (config, config file, origin, built-in name it came from, notes); config None when there is none
FoundConfig = Tuple[Optional[Dict[str, Any]], Optional[Path], str, Optional[str], List[str]]


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


def _find_config(directory: Path, layout: str, config: Optional[Mapping[str, Any]]) -> FoundConfig:
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
