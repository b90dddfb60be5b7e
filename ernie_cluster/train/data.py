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

import logging
from pathlib import Path
from typing import Any, Dict, List

log = logging.getLogger("ernie_cluster.train")

DATA_WAIT_TIMEOUT_S = 1800.0


class DataSetupError(RuntimeError):
    pass


def masking_config(spec):
    """The spec's data.masking as data_tools' MaskingConfig (same field names)."""
    from data_tools.masking import MaskingConfig

    return MaskingConfig.from_dict(spec.data.masking.model_dump())


def open_datasets(spec, cache_dir: Path, *, is_builder: bool, timeout_s: float = DATA_WAIT_TIMEOUT_S) -> Dict[str, Any]:
    from data_tools.dataset import build_pretraining_datasets

    from .model import vocab_file_for

    vocab = vocab_file_for(spec)
    if vocab is None:
        raise DataSetupError("no vocab file: set data.vocab_file (or use a model directory with vocab.txt)")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    try:
        return build_pretraining_datasets(
            spec.data.input_prefix, str(vocab), spec.data.split, spec.train.max_seq_len, masking=masking_config(spec),
            seed=spec.train.seed, cache_dir=str(cache_dir), is_builder=is_builder, timeout_s=timeout_s)
    except (ValueError, FileNotFoundError, TimeoutError) as exc:  # data_tools' DataError is a ValueError
        raise DataSetupError(f"cannot open the datasets: {exc}") from exc


def _batches(spec, dataset, dist, *, accumulate_steps: int, start_step: int, num_workers: int):
    from data_tools.loader import PretrainingBatches

    return PretrainingBatches(dataset, spec.train.micro_batch_size, accumulate_steps=accumulate_steps,
                              dp_rank=dist.rank, dp_size=dist.world_size, start_step=start_step,
                              num_workers=num_workers)


def train_stream(spec, dataset, dist, start_step: int):
    """`(step, [micro-batch dicts])` for this rank from `start_step`; close it with `close_stream`."""
    return _batches(spec, dataset, dist, accumulate_steps=spec.accumulate_steps, start_step=start_step,
                    num_workers=spec.train.num_workers)


def eval_micro_batches(spec, dataset, dist, eval_index: int, n: int) -> List[Dict[str, Any]]:
    """`n` micro-batches for this rank; eval `e` reads the samples of "step" e of an n-micro-batch stream."""
    if n <= 0 or dataset is None:
        return []
    with _batches(spec, dataset, dist, accumulate_steps=n, start_step=eval_index, num_workers=0) as batches:
        _, micro_batches = next(batches)
    return list(micro_batches)


def close_stream(stream) -> None:
    if stream is not None:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - shutting down; the workers are reaped by their finalizer anyway
            pass
