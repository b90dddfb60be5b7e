"""The trainer's view of `data_tools`: datasets, the training stream, eval batches.

`data_tools` (numpy only) owns the sample index maps, masking and collation; this module
only adapts its entry points to the trainer:

* `open_datasets(spec, cache_dir, is_builder=...)`: the train/valid/test datasets from the index
  maps in `RUN/data_cache`. Normally the node launcher built them before the trainers started,
  so every rank only reads; standalone, global rank 0 builds and the others wait.
  The builder also warns about documents that give no sample (per split, with the reason)
  and records them in `RUN/data_cache/data_report.json`, which `status` shows.
* `train_stream(...)`: `(step, [micro-batch dicts])` for this rank from `start_step`
  (O(1) skip): step s covers global samples [s*gbs, (s+1)*gbs).
* `eval_micro_batches(...)`: `n` micro-batches of a split with a start that depends only on
  the eval index (every eval of every run sees the same batches).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..rundir import DATA_REPORT, write_atomic  # standard library only

log = logging.getLogger("ernie_cluster.train")

DATA_WAIT_TIMEOUT_S = 1800.0


class DataSetupError(RuntimeError):
    pass


def masking_config(spec):
    """The spec's data.masking as data_tools' MaskingConfig (same field names)."""
    from data_tools.masking import MaskingConfig

    return MaskingConfig.from_dict(spec.data.masking.model_dump())


def shuffle_documents(spec) -> bool:
    """data.shuffle_documents (default true); false keeps the old contiguous splits of a run begun with them."""
    return spec.data.shuffle_documents


def open_datasets(spec, cache_dir: Path, *, is_builder: bool, timeout_s: float = DATA_WAIT_TIMEOUT_S,
                  warn: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """The datasets; the builder reports dropped documents to `warn` (default: this log) and the report file."""
    from data_tools.dataset import build_pretraining_datasets

    from .model import vocab_file_for

    vocab = vocab_file_for(spec)
    if vocab is None:
        raise DataSetupError("no vocab file: set data.vocab_file (or use a model directory with vocab.txt)")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    try:
        datasets = build_pretraining_datasets(
            spec.data.input_prefix, str(vocab), spec.data.split, spec.train.max_seq_len, masking=masking_config(spec),
            seed=spec.train.seed, cache_dir=str(cache_dir), is_builder=is_builder, timeout_s=timeout_s,
            shuffle_documents=shuffle_documents(spec), warn_dropped=False)
    except (ValueError, FileNotFoundError, TimeoutError) as exc:  # data_tools' DataError is a ValueError
        raise DataSetupError(f"cannot open the datasets: {exc}") from exc
    if is_builder:
        report = data_report(spec, datasets)
        for line in report["warnings"]:
            (warn or log.warning)(line)
        try:
            write_atomic(Path(cache_dir) / DATA_REPORT, json.dumps(report, indent=1) + "\n")
        except OSError as exc:  # the report is advice: never fail a run for it
            log.warning("could not write %s: %s", Path(cache_dir) / DATA_REPORT, exc)
    return datasets


def data_report(spec, datasets: Dict[str, Any]) -> Dict[str, Any]:
    """Documents per split that give no sample, why, and the warning lines (JSON-ready)."""
    from data_tools.dataset import dropped_warning

    splits: Dict[str, Any] = {}
    warnings: List[str] = []
    for name, ds in datasets.items():
        dropped = dict(getattr(ds, "dropped", None) or {})
        if not dropped:
            continue
        dropped["dropped"] = dropped.get("too_few_sentences", 0) + dropped.get("long_sentence", 0)
        splits[name] = dropped
        line = dropped_warning(name, dropped)
        if line:
            warnings.append(line)
    total = sum(d["dropped"] for d in splits.values())
    summary = None
    if total:
        per = ", ".join(f"{n} {d['dropped']}" for n, d in splits.items() if d["dropped"])
        docs = sum(d.get("documents", 0) for d in splits.values())
        short = sum(d.get("too_few_sentences", 0) for d in splits.values())
        why = []
        if short:
            need = max(d.get("min_sentences", 1) for d in splits.values())
            why.append(f"{short} with fewer than {need} sentence{'s' if need > 1 else ''}"
                       + (" (binary_head)" if need > 1 else ""))
        if total - short:
            why.append(f"{total - short} with a too long sentence")
        summary = f"{total} of {docs} documents dropped ({per}): {', '.join(why)}; see data_cache/{DATA_REPORT}"
    return {"version": 1, "time": time.time(), "binary_head": bool(spec.data.masking.binary_head),
            "shuffle_documents": shuffle_documents(spec), "dropped_documents": total, "splits": splits,
            "warnings": warnings, "summary": summary}


def _batches(spec, dataset, dist, *, accumulate_steps: int, start_step: int, num_workers: int):
    from data_tools.loader import PretrainingBatches

    return PretrainingBatches(dataset, spec.train.micro_batch_size, accumulate_steps=accumulate_steps,
                              dp_rank=dist.rank, dp_size=dist.world_size, start_step=start_step,
                              num_workers=num_workers)


def train_stream(spec, dataset, dist, start_step: int, accumulate_steps: int):
    """`(step, [micro-batch dicts])` for this rank from `start_step` (the attempt's accumulation: its batch
    plan); close it with `close_stream`."""
    return _batches(spec, dataset, dist, accumulate_steps=accumulate_steps, start_step=start_step,
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
