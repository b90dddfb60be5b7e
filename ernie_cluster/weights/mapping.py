"""ErnieForPretraining's structured names and shapes, how stored tensors map onto them, and what is refused.

One set of rules for both checks: `shape_problems` judges names and shapes alone (paddle-free, what
``validate`` reports), `load.load_starting_weights` applies the same rules to the tensors themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .headers import tensor_shapes
from .names import ENCODER_PREFIX, ERNIE_TIES, HEADS_PREFIX, LEGACY_TIED_KEYS

if TYPE_CHECKING:
    from .layouts import ModelSource

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


def target_name(key: str, expected: Mapping[str, Any]) -> Optional[str]:
    """The structured name a stored tensor maps to: its own, or with the ``ernie.`` prefix added (an
    ErnieModel-only file); None when neither is a parameter."""
    if key in expected:
        return key
    if ENCODER_PREFIX + key in expected:
        return ENCODER_PREFIX + key
    return None


def _listing(items: Sequence[str], limit: Optional[int], sep: str = ", ") -> str:
    if limit is None:
        return sep.join(items)
    return sep.join(items[:limit]) + (" ..." if len(items) > limit else "")


def mapping_problems(where: Any, config_origin: str, bad_shapes: List[str], missing: List[str],
                     unused: List[str], *, allow_missing_heads: bool, limit: Optional[int],
                     unused_limit: int) -> List[str]:
    """The refusals both checks share, in their order: shape mismatches, missing encoder tensors, missing
    heads (unless `allow_missing_heads`), tensors that map to nothing. `missing` is sorted; lists are cut
    after `limit` (None: never) and the unused ones after `unused_limit`."""
    problems = []
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} shape mismatch(es) in {where} (config {config_origin}): "
                        + _listing(bad_shapes, limit, "; "))
    encoder = [m for m in missing if not m.startswith(HEADS_PREFIX)]
    heads = [m for m in missing if m.startswith(HEADS_PREFIX)]
    if encoder:
        problems.append(f"{len(encoder)} encoder tensor(s) missing from {where}: " + _listing(encoder, limit))
    if heads and not allow_missing_heads:
        problems.append(f"{len(heads)} pretraining head tensor(s) missing from {where}: {', '.join(heads)}; set "
                        f"model.allow_missing_heads: true to start these from a fresh initialisation")
    if unused:
        problems.append(f"{len(unused)} tensor(s) in {where} map to no parameter of ErnieForPretraining: "
                        + _listing(sorted(unused), unused_limit))
    return problems


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
    found: Dict[str, Tuple[int, ...]] = {}
    origin: Dict[str, str] = {}
    unused = []
    for key, shape in shapes.items():
        name = target_name(key, exp)
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
    bad = [f"{origin[n]}: file {found[n]} vs model {exp[n]}" for n in sorted(found) if found[n] != exp[n]]
    return mapping_problems(source.weights_location, source.config_origin, bad, sorted(set(exp) - set(found)),
                            unused, allow_missing_heads=allow_missing_heads, limit=10, unused_limit=10)
