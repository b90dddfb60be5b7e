"""Output files of ``create_pretraining_data``: ``<P>_ids.npy`` streamed, then ``<P>_idx.npz``.

The caller writes both under temporary names and renames them into place at
the end; the layout is described in :mod:`data_tools.create_pretraining_data`.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .vocab import CORPUS_VOCAB_FILE_KEY, CORPUS_VOCAB_KEY


class NpyStreamWriter:
    """Writes a 1-D ``.npy`` of unknown length: fixed 128-byte header patched at close."""

    HEADER = 128

    def __init__(self, path: str, dtype: str):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._f = open(path, "wb")
        self._f.write(b"\0" * self.HEADER)

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self._f.write(arr.tobytes())
        self.count += arr.shape[0]

    def close(self) -> None:
        d = "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }" % (self.dtype.str, self.count)
        hlen = self.HEADER - 10
        if len(d) + 1 > hlen:  # pragma: no cover - would need >= 10^61 tokens
            raise ValueError("npy header too long")
        header = b"\x93NUMPY\x01\x00" + struct.pack("<H", hlen) + (d + " " * (hlen - len(d) - 1) + "\n").encode()
        self._f.seek(0)
        self._f.write(header)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


def offsets(counts: np.ndarray) -> np.ndarray:
    """``[0, c0, c0+c1, ...]`` as int64 (sentence -> token, document -> sentence offsets)."""
    out = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, dtype=np.int64, out=out[1:])
    return out


def write_index(path: str, lens: np.ndarray, sents: np.ndarray, docs: np.ndarray, vocab_digest: str,
                vocab_path: str) -> None:
    """``<P>_idx.npz`` (``lens``, ``sents``, ``docs`` and the vocab's digest and path), flushed to disk."""
    with open(path, "wb") as f:
        np.savez(f, lens=lens.astype(np.int32), sents=sents, docs=docs,
                 **{CORPUS_VOCAB_KEY: np.array(vocab_digest), CORPUS_VOCAB_FILE_KEY: np.array(vocab_path)})
        f.flush()
        os.fsync(f.fileno())


__all__ = ["NpyStreamWriter", "offsets", "write_index"]
