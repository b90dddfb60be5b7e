"""The trainer's view of `data_tools`: datasets, the training stream, eval batches.

`data_tools` (numpy only) owns the sample index maps, masking and collation; this module
only adapts its entry points to the trainer:

* `open_datasets(spec, run, dist)`: the train/valid/test datasets from the index maps in
  `RUN/data_cache`. Normally the node launcher built them before the trainers started,
  so every rank only reads; standalone, global rank 0 builds and the others wait.
* `train_stream(...)`: `(step, [micro-batch dicts])` for this rank from `start_step`
  (O(1) skip): step s covers global samples [s*gbs, (s+1)*gbs).
* `eval_micro_batches(...)`: `n` micro-batches of a split with a start that depends only on
  the eval index (every eval of every run sees the same batches).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

log = logging.getLogger("ernie_cluster.train")

DATA_WAIT_TIMEOUT_S = 1800.0


class DataSetupError(RuntimeError):
    pass


_CANDIDATE_MODULES = ("data_tools.dataset", "data_tools.batching", "data_tools.batches", "data_tools.loader",
                      "data_tools.collate", "data_tools")


def _find(name: str):
    """`name` from the first data_tools module that defines it."""
    import importlib

    errors = []
    for mod_name in _CANDIDATE_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            errors.append(f"{mod_name}: {exc}")
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise DataSetupError(f"data_tools provides no {name} ({'; '.join(errors) or 'not found in ' + ', '.join(_CANDIDATE_MODULES)})")


class _DataTools:
    """The data_tools entry points the trainer uses (looked up lazily)."""

    def __getattr__(self, name: str):
        return _find(name)


def _dataset_module():
    return _DataTools()


def masking_config(spec):
    """The spec's data.masking as data_tools' MaskingConfig (same field names)."""
    cls = _find("MaskingConfig")
    fields = spec.data.masking.model_dump()
    from_dict = getattr(cls, "from_dict", None)
    try:
        known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        fields = {k: v for k, v in fields.items() if k in known}
    except AttributeError:
        pass
    return from_dict(fields) if from_dict else cls(**fields)


def open_datasets(spec, cache_dir: Path, *, is_builder: bool, timeout_s: float = DATA_WAIT_TIMEOUT_S) -> Dict[str, Any]:
    mod = _dataset_module()
    build = mod.build_pretraining_datasets
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    params = list(inspect.signature(build).parameters)
    if params and params[0] == "spec":
        kwargs = {"cache_dir": str(cache_dir), "is_builder": is_builder}
        if "timeout_s" in params:
            kwargs["timeout_s"] = timeout_s
        return build(spec, **kwargs)
    from .model import vocab_file_for

    vocab = vocab_file_for(spec)
    if vocab is None:
        raise DataSetupError("no vocab file: set data.vocab_file (or use a model directory with vocab.txt)")
    kwargs = dict(
        prefix=spec.data.input_prefix, vocab_file=str(vocab), split=spec.data.split,
        max_seq_len=spec.train.max_seq_len, masking=masking_config(spec), seed=spec.train.seed,
        cache_dir=str(cache_dir), is_builder=is_builder, timeout_s=timeout_s,
    )
    try:
        return build(**{k: v for k, v in kwargs.items() if k in params})
    except (ValueError, FileNotFoundError, TimeoutError) as exc:  # data_tools' DataError is a ValueError
        raise DataSetupError(f"cannot open the datasets: {exc}") from exc


def _batches_class():
    return _dataset_module().PretrainingBatches


def _collate():
    return _dataset_module().collate


def _make_batches(spec, dataset, *, micro_batch_size: int, accumulate_steps: int, dp_rank: int, dp_size: int,
                  start_step: int, num_workers: int):
    cls = _batches_class()
    params = inspect.signature(cls).parameters
    kwargs = dict(micro_batch_size=micro_batch_size, accumulate_steps=accumulate_steps, dp_rank=dp_rank,
                  dp_size=dp_size, start_step=start_step, num_workers=num_workers,
                  max_seq_len=spec.train.max_seq_len,
                  max_predictions_per_seq=spec.data.masking.max_predictions_per_seq)
    accepted = {k: v for k, v in kwargs.items() if k in params}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        accepted = kwargs
    return cls(dataset, **accepted)


def train_stream(spec, dataset, dist, start_step: int) -> Iterator[Tuple[int, List[Dict[str, Any]]]]:
    return iter(_make_batches(spec, dataset, micro_batch_size=spec.train.micro_batch_size,
                              accumulate_steps=spec.accumulate_steps, dp_rank=dist.rank, dp_size=dist.world_size,
                              start_step=start_step, num_workers=spec.train.num_workers))


def eval_micro_batches(spec, dataset, dist, eval_index: int, n: int) -> List[Dict[str, Any]]:
    """`n` micro-batches for this rank; eval `e` reads the samples of "step" e of an n-micro-batch stream."""
    if n <= 0 or dataset is None:
        return []
    batches = _make_batches(spec, dataset, micro_batch_size=spec.train.micro_batch_size, accumulate_steps=n,
                            dp_rank=dist.rank, dp_size=dist.world_size, start_step=eval_index, num_workers=0)
    it = iter(batches)
    try:
        _, mbs = next(it)
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
    return list(mbs)


def close_stream(stream) -> None:
    close = getattr(stream, "close", None)
    if close:
        try:
            close()
        except Exception:  # noqa: BLE001 - shutting down
            pass
