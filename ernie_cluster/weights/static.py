"""The reference scripts' static checkpoint (``model_last/static_vars.pdparams``): generated variable names
(``linear_3.w_0``) mapped onto ErnieForPretraining's structured names by rebuilding the static program.

Paddle side: paddle and paddlenlp are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

from .config import clean_config
from .names import ENCODER_PREFIX, WeightsError


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


def _legacy_builder(cfg) -> Callable[[], Dict[str, Any]]:
    """The older heads the reference scripts were written against, after the installed ErnieModel."""
    from paddle import nn
    from paddlenlp.transformers import ErnieModel

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

    return legacy


def static_name_maps(config: Mapping[str, Any]) -> List[StaticNameMap]:
    """How ErnieForPretraining's generated names map to structured names, in the two head layouts PaddleNLP had.

    1. the installed PaddleNLP's ErnieForPretraining (2.8.1: the MLM decoder is a TransposedLinear whose own
       weight is replaced by the word embedding: that weight is an orphan parameter of the program);
    2. the older heads the reference scripts were written against: ErnieLMPredictionHead took the embedding
       as its decoder weight and created ``decoder_bias`` itself (``ernie_lm_prediction_head_0.b_0``), so the
       sentence-order head's linear comes one index earlier.
    The encoder is built by the same ErnieModel in both, so its names agree.
    """
    from paddlenlp.transformers import ErnieForPretraining

    cfg = _ernie_config(config)

    def current():
        return dict(ErnieForPretraining(cfg).state_dict())

    maps = []
    for label, build in (("static program of the installed PaddleNLP", current),
                         ("static program with the older PaddleNLP heads", _legacy_builder(cfg))):
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
