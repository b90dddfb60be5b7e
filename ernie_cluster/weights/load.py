"""Loading the starting weights: every tensor read, mapped onto ErnieForPretraining's structured names
(``ernie.encoder.layers.0.self_attn.q_proj.weight``), anything partial refused.

Paddle side: numpy, paddle, paddlenlp and safetensors are imported inside the functions, so importing
this module stays light.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .layouts import ModelSource
from .manifest import ManifestError, verify_manifest
from .mapping import mapping_problems, target_name
from .names import ENCODER_PREFIX, ERNIE_TIES, HEADS_PREFIX, LEGACY_TIED_KEYS, WeightsError
from .report import StartingWeightsReport, tensor_checksum
from .static import map_static_names


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


@dataclass
class _Mapped:
    """The source's tensors by structured name, as far as the mapping has got, and what it found on the way."""

    where: Any                                 # what refusals name (ModelSource.weights_location)
    expected: Dict[str, Tuple[int, ...]]
    out: Dict[str, Any] = field(default_factory=dict)
    origin: Dict[str, str] = field(default_factory=dict)    # structured name -> the name in the file
    unused: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    cast: List[str] = field(default_factory=list)


def _take_tensors(m: _Mapped, raw: Mapping[str, Any]) -> Dict[str, Any]:
    """Map each tensor by its name or with the ``ernie.`` prefix; returns the older heads' tied ones."""
    import numpy as np

    legacy_tied: Dict[str, Any] = {}
    prefixed = 0
    for key, value in raw.items():
        name = target_name(key, m.expected)
        if name is None:
            if key in LEGACY_TIED_KEYS:
                legacy_tied[key] = value
            else:
                m.unused.append(key)
            continue
        prefixed += name != key
        if name in m.out:
            if not np.array_equal(np.asarray(m.out[name]), np.asarray(value)):
                m.problems.append(f"{m.where} holds both {m.origin[name]} and {key} for {name}, with different values")
            continue
        m.out[name], m.origin[name] = value, key
    if prefixed:
        m.notes.append(f"{prefixed} tensors without the '{ENCODER_PREFIX}' prefix (an ErnieModel file) "
                       f"mapped onto {ENCODER_PREFIX}*")
    return legacy_tied


def _tie(m: _Mapped, ties: Mapping[str, str], legacy_tied: Mapping[str, Any]) -> None:
    """Tied parameters: one value for the alias and the canonical name (they must agree when both are stored)."""
    import numpy as np

    for alias, canon in ties.items():
        if alias not in m.expected or canon not in m.expected:
            continue
        if alias in m.out and canon in m.out:
            if not np.array_equal(np.asarray(m.out[alias]), np.asarray(m.out[canon])):
                m.problems.append(f"{m.where}: {alias} and {canon} differ, but ErnieForPretraining ties them "
                                  f"(one parameter); these weights do not come from an ErnieForPretraining")
        elif alias in m.out:
            m.out[canon], m.origin[canon] = m.out[alias], m.origin[alias]
        elif canon in m.out:
            m.out[alias], m.origin[alias] = m.out[canon], m.origin[canon]
    for key, value in legacy_tied.items():
        canon = LEGACY_TIED_KEYS[key]
        if canon in m.out and not np.array_equal(np.asarray(m.out[canon]), np.asarray(value)):
            m.problems.append(f"{m.where}: {key} differs from {canon}; ErnieForPretraining ties the MLM decoder "
                              f"to the word embeddings, so it cannot hold both")
        elif canon in m.out:
            m.notes.append(f"{key} (older heads' name of the tied decoder weight) equals {canon}")
        else:
            m.unused.append(key)


def _check_shapes(m: _Mapped) -> List[str]:
    """Shape mismatches (file vs model); other floating tensors are cast to float32 in place."""
    import numpy as np

    bad_shape = []
    for name in sorted(m.out):
        value = np.asarray(m.out[name])
        if tuple(value.shape) != m.expected[name]:
            bad_shape.append(f"{m.origin[name]}: file {tuple(value.shape)} vs model {m.expected[name]}")
            continue
        if value.dtype.kind == "f" and value.dtype != np.float32:
            m.cast.append(f"{name} ({value.dtype})")
            value = value.astype(np.float32)
        m.out[name] = value
    return bad_shape


def _add_fresh_heads(out: Dict[str, Any], heads: Sequence[str], fresh, expected: Mapping[str, Tuple[int, ...]]) -> None:
    import numpy as np

    init = fresh() if callable(fresh) else fresh
    absent = [h for h in heads if h not in init]
    if absent:
        raise WeightsError(f"the fresh initialisation lacks {', '.join(absent)}")
    for h in heads:
        value = np.asarray(init[h])
        if tuple(value.shape) != expected[h]:
            raise WeightsError(f"fresh initialisation of {h} has shape {tuple(value.shape)}, the model {expected[h]}")
        out[h] = value


def _report(source: ModelSource, loaded: Mapping[str, Any], ties: Mapping[str, str], fresh_heads: List[str],
            mapping: str, m: _Mapped) -> StartingWeightsReport:
    import numpy as np

    distinct = {n: v for n, v in loaded.items() if not (n in ties and ties[n] in loaded)}
    return StartingWeightsReport(
        path=str(source.path), layout=source.layout, weights_format=source.weights_format,
        files=[str(f) for f in ([source.index_file] if source.index_file else []) + list(source.weight_files)],
        config_origin=source.config_origin, n_tensors=len(distinct),
        n_parameters=int(sum(int(np.asarray(v).size) for v in distinct.values())),
        checksum=tensor_checksum(loaded), fresh_heads=fresh_heads, mapping=mapping, cast=m.cast, notes=m.notes)


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
    t0 = time.time()
    if verify and source.manifest_file is not None:
        try:
            verify_manifest(source.path)
        except ManifestError as exc:
            raise WeightsError(str(exc)) from None
    expected = {k: tuple(int(d) for d in v) for k, v in expected_shapes.items()}
    raw = read_source_tensors(source)
    m = _Mapped(where=source.weights_location, expected=expected, notes=list(source.notes))
    mapping = "structured names"
    if source.weights_format == "static_vars":
        raw, mapping, extra = map_static_names(raw, source.config, source.weight_files[0])
        m.notes += extra
    _tie(m, ties, _take_tensors(m, raw))
    bad_shape = _check_shapes(m)
    missing = sorted(set(expected) - set(m.out))
    missing_heads = [n for n in missing if n.startswith(HEADS_PREFIX)]
    problems = m.problems + mapping_problems(m.where, source.config_origin, bad_shape, missing,
                                             [] if ignore_unused else m.unused,
                                             allow_missing_heads=allow_missing_heads, limit=None, unused_limit=20)
    if ignore_unused and m.unused:
        m.notes.append(f"ignored {len(m.unused)} tensor(s) that map to no parameter: {', '.join(sorted(m.unused)[:8])}")
    if problems:
        raise WeightsError(f"starting weights {source.path} ({source.layout}) refused:\n  " + "\n  ".join(problems))
    loaded = dict(m.out)
    if missing_heads and fresh is not None:
        _add_fresh_heads(m.out, missing_heads, fresh, expected)
    report = _report(source, loaded, ties, missing_heads, mapping, m)
    report.seconds = round(time.time() - t0, 3)
    return m.out, report
