"""Digests that compare runs and ranks: a step's input data and a rank's parameters (numpy only, imported lazily)."""

from __future__ import annotations


def batch_digest(micro_batches) -> str:
    """crc32 of this rank's step input (all micro-batches, all fields): compares data streams across runs."""
    import zlib

    import numpy as np

    crc = 0
    for mb in micro_batches:
        for key in sorted(mb):
            crc = zlib.crc32(np.ascontiguousarray(mb[key]).tobytes(), crc)
    return f"{crc:08x}"


def param_digest(engine) -> str:
    """sha256 over this rank's parameters (structured-name order): data-parallel ranks must agree."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    state = engine.model_state()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    return h.hexdigest()
