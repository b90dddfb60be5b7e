"""One pass over a checkpoint's bytes: every file is checksummed while it is written and while it is read
back, never read a second time only to be checked.

The checksum is xxh3-128 (`xxhash`): it is there to catch damage (a torn or truncated write, a flipped bit, a
partial copy), and the manifest that lists it sits beside the files, so whoever can change a file can change its
entry too: a cryptographic hash buys nothing here and costs ten times the time (sha256 runs at about 2 GB/s per
core on the machines we measured, xxh3 at about 28 GB/s, faster than the page cache hands bytes over).
Manifests written before list sha256; those files are checked with sha256.

Writing: `write_pickle(path, obj)` pickles `obj` with protocol 5, whose in-band buffers let the pickler hand each
numpy array's memory to the file as it is (protocol 4, paddle.save's default, first copies every array into a
bytes object). Each block is checksummed as it goes to the file; then the file is fsynced, and `write_pickle`
returns the {"size", "xxh3_128"} a manifest lists. `paddle.load` and `pickle.load` read these files as they read
paddle.save's. The object must not change while it is written (a checkpoint's state is a snapshot).
`write_bytes` does the same for a small file, `write_bytes_atomic` under a temporary name renamed into place.

Reading: `read_pickle(path, meta)` unpickles from a reader that checksums what it hands to the unpickler (a large
array in chunks, each checksummed while it is still in the CPU cache), and at the end compares size and checksum
with the manifest's `meta`; a mismatch raises `DamagedFile` and the object is dropped. Because the bytes are
unpickled before they are known to be intact, the unpickler builds only what a checkpoint holds (containers,
numbers, strings, numpy arrays and dtypes): a corrupted byte that turns into another global fails instead of
calling it. An intact file that still cannot be read is a `CheckpointError`, never mistaken for damage.

Standard library and xxhash only at import (numpy is resolved by name when a pickle asks for it).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import xxhash

from .ckpt_format import CheckpointError

PICKLE_PROTOCOL = 5            # in-band buffers: arrays are written from their own memory, no copy
READ_CHUNK = 8 << 20           # a large array is read in chunks, each checksummed while it is still in cache
WHOLE_FILE_BYTES = 1 << 20     # a smaller file is read with one call and unpickled from memory (fewer calls;
                               # above it, the second copy into the arrays costs more than streaming's calls)
CHECKSUM = "xxh3_128"          # the checksum new manifests list
_CHECKSUMS: Dict[str, Callable[[], Any]] = {CHECKSUM: xxhash.xxh3_128, "sha256": hashlib.sha256}  # newest first

# The globals a checkpoint pickle may name (numpy 1.x and 2.x module paths; protocol 4 and 5 arrays).
_ALLOWED_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class DamagedFile(CheckpointError):
    """A file whose bytes are not the ones its manifest lists (size or checksum)."""


def listed_checksum(meta: Dict[str, Any]) -> Tuple[str, Optional[str]]:
    """(algorithm, digest) a manifest entry lists: xxh3_128, or sha256 in manifests written before it."""
    for algorithm in _CHECKSUMS:
        if algorithm in meta:
            return algorithm, meta[algorithm]
    return CHECKSUM, None


def file_meta(path: Path, algorithm: str = CHECKSUM, chunk: int = READ_CHUNK) -> Dict[str, Any]:
    """{"size", algorithm} of a file, read once."""
    h, size = _CHECKSUMS[algorithm](), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
            size += len(block)
    return {"size": size, algorithm: h.hexdigest()}


def file_problem(path: Path, meta: Dict[str, Any]) -> str:
    """"" when `path` has the size and checksum `meta` lists, else what differs (the file is read once)."""
    algorithm, _ = listed_checksum(meta)
    got = file_meta(path, algorithm)
    return mismatch(Path(path).name, got["size"], meta, got[algorithm])


def data_problem(name: str, data: bytes, meta: Dict[str, Any]) -> str:
    """The same check for a file already read into memory (a small one: the trainer state)."""
    algorithm, _ = listed_checksum(meta)
    return mismatch(name, len(data), meta, _CHECKSUMS[algorithm](data).hexdigest())


def mismatch(name: str, size: int, meta: Dict[str, Any], digest: Optional[str] = None) -> str:
    """"" when `size` (and `digest`, when given) are what manifest entry `meta` lists, else what differs."""
    if size != meta.get("size"):
        return f"{name} has {size} bytes, the manifest says {meta.get('size')}"
    algorithm, want = listed_checksum(meta)
    if digest is not None and digest != want:
        return f"{name} is corrupted ({algorithm} {digest[:12]}... != manifest {str(want)[:12]}...)"
    return ""


def _byte_view(block) -> memoryview:
    """A 1-D byte view of what the pickler hands over (bytes, a PickleBuffer of an array, a memoryview)."""
    if isinstance(block, pickle.PickleBuffer):
        return block.raw()
    view = memoryview(block)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class _ChecksummingWriter:
    def __init__(self, f):
        self._f = f
        self._h = _CHECKSUMS[CHECKSUM]()
        self.size = 0

    def write(self, block) -> int:
        block = block if isinstance(block, bytes) else _byte_view(block)
        self._h.update(block)
        n = self._f.write(block)
        self.size += n
        return n

    def meta(self) -> Dict[str, Any]:
        return {"size": self.size, CHECKSUM: self._h.hexdigest()}


class _ChecksummingReader:
    """What the unpickler reads, checksummed on the way (with the algorithm the manifest lists). The unpickler calls
    these once per pickle frame and per array, hundreds of times per file: they are closures over locals, one Python
    call each, which measured a tenth faster on a small checkpoint than methods calling a helper."""

    def __init__(self, f, size: int, algorithm: str):
        h = _CHECKSUMS[algorithm]()
        update, f_read, f_readinto = h.update, f.read, f.readinto
        left = [size]  # never more than the file holds: a corrupted length must not allocate a huge buffer

        def read(n: int = -1) -> bytes:
            block = f_read(left[0] if n is None or n < 0 or n > left[0] else n)
            left[0] -= len(block)
            update(block)
            return block

        def readline(limit: int = -1) -> bytes:
            block = f.readline(left[0] if limit is None or limit < 0 or limit > left[0] else limit)
            left[0] -= len(block)
            update(block)
            return block

        def readinto(buf) -> int:
            # a large array in chunks, each checksummed while it is still in the CPU cache
            view = _byte_view(buf)
            want, got = min(view.nbytes, left[0]), 0
            while got < want:
                n = f_readinto(view[got:min(want, got + READ_CHUNK)])
                if not n:
                    break
                update(view[got:got + n])
                got += n
            left[0] -= got
            return got

        def drain() -> None:
            """Checksum whatever the unpickler left unread (trailing bytes, or all of it after an error)."""
            while left[0] > 0 and read(min(left[0], READ_CHUNK)):
                pass

        self.read, self.readline, self.readinto, self.drain, self.hexdigest = read, readline, readinto, drain, h.hexdigest


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"a checkpoint pickle does not name {module}.{name}")
        return super().find_class(module, name)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def write_pickle(path: Path, obj: Any, *, fsync: bool = True) -> Dict[str, Any]:
    """Pickle `obj` to `path` (checksummed on the way, fsynced); {"size", "xxh3_128"} of the file."""
    with open(path, "wb") as f:
        writer = _ChecksummingWriter(f)
        pickle.Pickler(writer, protocol=PICKLE_PROTOCOL).dump(obj)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return writer.meta()


def write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> Dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return {"size": len(data), CHECKSUM: _CHECKSUMS[CHECKSUM](data).hexdigest()}


def write_bytes_atomic(path: Path, data: bytes) -> Dict[str, Any]:
    """`write_bytes` under a temporary name, then renamed: a reader sees the whole file or none."""
    part = path.with_name(f".{path.name}.part")
    meta = write_bytes(part, data)
    os.replace(part, path)
    return meta


def pickle_bytes(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_pickle(path: Path, meta: Optional[Dict[str, Any]] = None) -> Any:
    """The object pickled in `path`, read once; with `meta` ({"size", checksum}), verified against it on the way
    (DamagedFile when the bytes differ, CheckpointError when intact bytes do not unpickle)."""
    path = Path(path)
    algorithm, want = listed_checksum(meta or {})
    with open(path, "rb") as f:  # small buffer: the unpickler starts on the first pages while the rest arrive
        size = os.fstat(f.fileno()).st_size
        reason = mismatch(path.name, size, meta) if meta is not None else ""
        if reason:
            raise DamagedFile(reason)
        if size <= WHOLE_FILE_BYTES:  # one read and one checksum call, checked before it is unpickled
            data = f.read(size)
            digest = _CHECKSUMS[algorithm](data).hexdigest() if meta is not None else None
            if digest == want or meta is None:
                obj, error = _unpickle(io.BytesIO(data))
        else:  # streamed: checksummed while it is unpickled, judged once every byte is checksummed
            reader = _ChecksummingReader(f, size, algorithm)
            obj, error = _unpickle(reader)
            reader.drain()
            digest = reader.hexdigest()
    if meta is not None and digest != want:
        raise DamagedFile(mismatch(path.name, size, meta, digest))
    if error is not None:
        raise CheckpointError(f"{path} is intact but cannot be read as a checkpoint pickle: "
                              f"{type(error).__name__}: {error}")
    return obj


def _unpickle(source) -> Tuple[Any, Optional[Exception]]:
    try:
        return _CheckpointUnpickler(source, encoding="latin1").load(), None
    except Exception as exc:  # noqa: BLE001 - judged by the caller, which knows whether the bytes are intact
        return None, exc
