"""ERNIE 1.0 pretraining data: raw text -> token ids -> masked, fixed-shape batches.

Modules (the training side imports only numpy-based ones; none imports paddle):

* ``data_tools.create_pretraining_data`` - CLI: corpus -> ``<P>_ids.npy`` + ``<P>_idx.npz``
* ``data_tools.toy_corpus``              - CLI: deterministic synthetic corpus + vocab
* ``data_tools.dataset``                 - ``IndexedDataset``, ``ErnieDataset``, ``build_pretraining_datasets``
* ``data_tools.masking``                 - ``MaskingConfig`` and the vectorised masking / SOP code
* ``data_tools.loader``                  - ``collate`` and ``PretrainingBatches``
* ``data_tools.mapping``                 - sample mapping (C++ ``data_tools._helpers`` or Python) + cache

The names below are importable from the package itself, loaded on first use
so that ``import data_tools`` stays instant.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "MaskingConfig": "masking",
    "MaskingTables": "masking",
    "create_masked_lm_predictions": "masking",
    "IndexedDataset": "dataset",
    "ErnieDataset": "dataset",
    "DataError": "dataset",
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
