"""ERNIE 1.0 pretraining data: raw text -> token ids -> masked, fixed-shape batches.

Modules, one concern each (the training side imports only numpy-based ones; none imports paddle):

* ``data_tools.create_pretraining_data`` - CLI: corpus -> ``<P>_ids.npy`` + ``<P>_idx.npz``, built from
  ``corpus_input`` (input files -> documents), ``encoder`` (sentences -> ids and
  whole-word ``##`` marks, worker pool) and ``corpus_output`` (the two files)
* ``data_tools.toy_corpus``              - CLI: deterministic synthetic corpus + vocab
* ``data_tools.vocab`` / ``tokenizer``   - vocab (with the ``##CJK`` extension) and the WordPiece tokenizer
* ``data_tools.indexed``                 - ``IndexedDataset`` / ``IndexedCorpora``: reading tokenized corpora
* ``data_tools.splits``                  - train/valid/test document splits
* ``data_tools.mapping``                 - sample mapping (C++ ``data_tools._helpers`` or Python);
  ``mapping_cache`` - its build-once / wait cache files
* ``data_tools.masking``                 - ``MaskingConfig``, whole-word masking and the SOP samples
* ``data_tools.dataset``                 - ``ErnieDataset``, ``build_pretraining_datasets``
* ``data_tools.loader``                  - ``collate`` and ``PretrainingBatches``
* ``data_tools.synthetic``               - synthetic indexed corpora for tests and benchmarks
* ``data_tools.errors``, ``splitmix``    - ``DataError``; the splitmix64 keys shared with ``_helpers.cpp``

The names below are importable from the package itself, loaded on first use
so that ``import data_tools`` stays instant.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "MaskingConfig": "masking",
    "MaskingTables": "masking",
    "create_masked_lm_predictions": "masking",
    "IndexedDataset": "indexed",
    "ErnieDataset": "dataset",
    "DataError": "errors",
    "build_pretraining_datasets": "dataset",
    "get_or_build_mapping": "mapping",
    "build_mapping": "mapping",
    "build_mapping_py": "mapping",
    "collate": "loader",
    "PretrainingBatches": "loader",
    "load_vocab": "vocab",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'data_tools' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
