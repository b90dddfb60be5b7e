"""Tensor names and shapes from the weight files without paddle or numpy (what ``validate`` can read).

* safetensors: the JSON header (8-byte length, then JSON), no tensor data read;
* ``.pdparams`` (a pickle of numpy arrays): an unpickler that knows only numpy's array and dtype
  reconstructors, so nothing in the file is ever called; the array bytes are read and dropped.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from .names import WeightsError

if TYPE_CHECKING:
    from .layouts import ModelSource


def safetensors_header(path: Path) -> Dict[str, Any]:
    """Tensor names -> {dtype, shape} from a .safetensors header (8-byte length + JSON), without loading data."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise WeightsError(f"{path}: too short for a safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1024 * 1024:
                raise WeightsError(f"{path}: implausible safetensors header length {n}")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read it ({exc})") from None
    except ValueError as exc:
        raise WeightsError(f"{path}: not a safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    return header


class _Unsupported(Exception):
    """The file holds something the shape reader does not know; only the trainer (paddle.load) can read it."""


class _ArrayShape:
    """Stands in for a pickled numpy array: keeps its shape, drops its data."""

    def __init__(self, *_args: Any) -> None:
        self.shape: Optional[Tuple[int, ...]] = None

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw data)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)):
            raise _Unsupported("an array with an unexpected pickled state")
        self.shape = tuple(int(d) for d in state[1])


class _DType:
    def __init__(self, *_args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _reconstruct(_cls: Any, *_args: Any) -> _ArrayShape:
    return _ArrayShape()


def _pickled_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Tensor name -> shape of a paddle.save'd state dict (a pickle of numpy arrays), without numpy or paddle.

    Only numpy's array and dtype reconstructors are allowed (anything else raises _Unsupported, and nothing
    in the file is ever called); the array bytes are read and dropped.
    """
    import collections
    import pickle

    allowed = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): _ArrayShape, ("numpy", "dtype"): _DType,
               ("collections", "OrderedDict"): collections.OrderedDict}

    class _Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return allowed[module, name]
            except KeyError:
                raise _Unsupported(f"{module}.{name}") from None

    try:
        with open(path, "rb") as f:
            state = _Reader(f).load()
    except _Unsupported:
        raise
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read it ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - truncated or not a pickle at all
        raise WeightsError(f"{path}: not a readable paddle.save state dict ({type(exc).__name__}: {exc}); "
                           f"the file is damaged or incomplete: copy or fetch it again") from None
    if not isinstance(state, dict):
        raise _Unsupported(f"a {type(state).__name__}")
    state.pop("StructuredToParameterName@@", None)
    out = {}
    for key, value in state.items():
        if not isinstance(value, _ArrayShape) or value.shape is None:
            raise _Unsupported(f"{key} is not an array")
        out[str(key)] = value.shape
    return out


def tensor_shapes(source: ModelSource) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Name -> shape of every tensor in the source's weight files, read without paddle; None when the
    format needs paddle to be read (static_vars, or a pickle holding more than numpy arrays)."""
    if source.weights_format == "static_vars":
        return None
    out: Dict[str, Tuple[int, ...]] = {}
    for f in source.weight_files:
        try:
            if source.weights_format.startswith("safetensors"):
                part = {k: tuple(int(d) for d in v.get("shape", ())) for k, v in safetensors_header(f).items()
                        if isinstance(v, dict)}
            else:
                part = _pickled_shapes(f)
        except _Unsupported:
            return None
        out.update(part)
    return out
