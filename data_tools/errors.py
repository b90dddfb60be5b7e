"""The errors of the training-side data code (numpy-free, importable from anywhere).

``data_tools.dataset`` and ``data_tools.mapping`` re-export both names, their
historical import paths.
"""

from __future__ import annotations


class DataError(ValueError):
    """The corpus cannot be used as configured (missing files, too small, inconsistent)."""


class MappingBuildError(DataError):
    """The builder rank failed to build a sample mapping (its failure marker was found)."""


__all__ = ["DataError", "MappingBuildError"]
