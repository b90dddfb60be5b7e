"""splitmix64 hashing: the one definition of the counter-based keys of the sample
mapping (Python side of ``_helpers.cpp``'s ``mix64``) and of the document splits."""

from __future__ import annotations

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # the splitmix64 increment (the C++ kGolden)


def mix64(z: int) -> int:
    """splitmix64 finaliser of a 64-bit integer (a bijection on [0, 2**64))."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mix64_array(x: np.ndarray) -> np.ndarray:
    """:func:`mix64` of every element of a uint64 array (numpy wraps the products modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


__all__ = ["M64", "GOLDEN", "mix64", "mix64_array"]
