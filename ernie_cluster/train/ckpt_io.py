"""One pass over a checkpoint's bytes: every file is hashed (sha256) while it is written and while it is read
back, never read a second time only to be hashed.

Writing: `write_pickle(path, obj)` pickles `obj` with protocol 5, whose in-band buffers let the pickler hand each
numpy array's memory to the file as it is (protocol 4, paddle.save's default, first copies every array into a
bytes object). Each block goes to a hashing thread as it goes to the file; then the file is fsynced, and
`write_pickle` returns the {"size", "sha256"} a manifest lists. `paddle.load` and `pickle.load` read these files
as they read paddle.save's. The object must not change while it is written (a checkpoint's state is a snapshot).
`write_bytes` does the same for a small file, `write_bytes_atomic` under a temporary name renamed into place.

Reading: `read_pickle(path, meta)` unpickles from a reader that hashes what it hands to the unpickler, reading the
next chunk of a large array while a helper thread hashes the previous one, and at the end compares size and
sha256 with the manifest's `meta`; a mismatch raises `DamagedFile` and the object is dropped. Because the bytes
are unpickled before they are known to be intact, the unpickler builds only what a checkpoint holds (containers,
numbers, strings, numpy arrays and dtypes): a corrupted byte that turns into another global fails instead of
calling it. An intact file (sha256 as listed) that still cannot be read is a `CheckpointError`, never mistaken for
damage.

Standard library only at import (numpy is resolved by name when a pickle asks for it).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import queue
import threading
from pathlib import Path
from typing import Any, Dict, Optional

from .ckpt_format import CheckpointError

PICKLE_PROTOCOL = 5            # in-band buffers: arrays are written from their own memory, no copy
INLINE_HASH_BYTES = 256 << 10  # smaller blocks are hashed at once when nothing is queued (a thread hop costs more)
READ_CHUNK = 8 << 20           # a large array is read in chunks, each hashed while the next one is read

# The globals a checkpoint pickle may name (numpy 1.x and 2.x module paths; protocol 4 and 5 arrays).
_ALLOWED_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class DamagedFile(CheckpointError):
    """A file whose bytes are not the ones its manifest lists (size or sha256)."""


class Hasher:
    """sha256 of the blocks given to `update`, in order, on a helper thread (hashlib releases the GIL), so hashing
    overlaps the file I/O and the (un)pickling of the next block. A block's memory must stay as it is until it
    is hashed: bytes, or a view the caller keeps unchanged (`join` waits for everything queued)."""

    def __init__(self, max_pending: int = 8):
        self._h = hashlib.sha256()
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="ckpt-hash", daemon=True)
        self._thread.start()
        self.size = 0

    def _run(self) -> None:
        while True:
            block = self._q.get()
            if block is None:
                self._q.task_done()
                return
            self._h.update(block)
            self._q.task_done()

    def update(self, block) -> None:
        n = block.nbytes if isinstance(block, memoryview) else len(block)
        self.size += n
        if n < INLINE_HASH_BYTES and self._q.unfinished_tasks == 0:
            self._h.update(block)  # nothing queued before it: the order is kept
        else:
            self._q.put(block)

    def join(self) -> None:
        self._q.join()

    def hexdigest(self) -> str:
        self._q.put(None)
        self._thread.join()
        return self._h.hexdigest()


def _byte_view(block) -> memoryview:
    """A 1-D byte view of what the pickler hands over (bytes, a PickleBuffer of an array, a memoryview)."""
    if isinstance(block, pickle.PickleBuffer):
        return block.raw()
    view = memoryview(block)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class _HashingWriter:
    def __init__(self, f):
        self._f = f
        self.hasher = Hasher()

    def write(self, block) -> int:
        # a view keeps its array alive; the array does not change while it is written (a snapshot)
        block = block if isinstance(block, bytes) else _byte_view(block)
        self.hasher.update(block)
        self._f.write(block)
        return len(block) if isinstance(block, bytes) else block.nbytes

    def meta(self) -> Dict[str, Any]:
        return {"size": self.hasher.size, "sha256": self.hasher.hexdigest()}


class _HashingReader:
    """What the unpickler reads, hashed on the way. `read` returns new bytes the hasher may keep; `readinto` fills
    the unpickler's own buffer, so it hashes that buffer before it returns (the buffer may be gone afterwards)."""

    def __init__(self, f, size: int):
        self._f = f
        self._left = size
        self.hasher = Hasher()

    def _take(self, block: bytes) -> bytes:
        self._left -= len(block)
        self.hasher.update(block)
        return block

    def read(self, n: int = -1) -> bytes:
        # never more than the file holds: a corrupted length must not allocate a huge buffer
        n = self._left if n is None or n < 0 or n > self._left else n
        return self._take(self._f.read(n))

    def readline(self, limit: int = -1) -> bytes:
        limit = self._left if limit is None or limit < 0 or limit > self._left else limit
        return self._take(self._f.readline(limit))

    def readinto(self, buf) -> int:
        view = _byte_view(buf)
        want, got = min(view.nbytes, self._left), 0
        while got < want:
            n = self._f.readinto(view[got:min(want, got + READ_CHUNK)])
            if not n:
                break
            self.hasher.update(view[got:got + n])  # hashed while the next chunk is read
            got += n
        self.hasher.join()
        self._left -= got
        return got

    def drain(self) -> None:
        """Hash whatever the unpickler left unread (trailing bytes, or all of it after an error)."""
        while self._left > 0:
            block = self._f.read(min(self._left, 8 << 20))
            if not block:
                break
            self._take(block)


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"a checkpoint pickle does not name {module}.{name}")
        return super().find_class(module, name)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def write_pickle(path: Path, obj: Any, *, fsync: bool = True) -> Dict[str, Any]:
    """Pickle `obj` to `path` (hashed on the way, fsynced); {"size", "sha256"} of the file."""
    with open(path, "wb") as f:
        writer = _HashingWriter(f)
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
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


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
    """The object pickled in `path`, read once; with `meta` ({"size", "sha256"}), verified against it on the way
    (DamagedFile when the bytes differ, CheckpointError when intact bytes do not unpickle)."""
    path = Path(path)
    with open(path, "rb", buffering=1 << 20) as f:
        size = os.fstat(f.fileno()).st_size
        if meta is not None and size != meta.get("size"):
            raise DamagedFile(f"{path.name} has {size} bytes, the manifest says {meta.get('size')}")
        reader = _HashingReader(f, size)
        try:
            obj, error = _CheckpointUnpickler(reader, encoding="latin1").load(), None
        except Exception as exc:  # noqa: BLE001 - judged below, once every byte is hashed
            obj, error = None, exc
        reader.drain()
        digest = reader.hasher.hexdigest()
    if meta is not None and digest != meta.get("sha256"):
        raise DamagedFile(f"{path.name} is corrupted (sha256 {digest[:12]}... != manifest "
                          f"{str(meta.get('sha256'))[:12]}...)")
    if error is not None:
        raise CheckpointError(f"{path} is intact but cannot be read as a checkpoint pickle: "
                              f"{type(error).__name__}: {error}")
    return obj
