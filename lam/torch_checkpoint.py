"""Reads PyTorch ``torch.save`` state_dicts (zip format) into numpy arrays, without torch.

LAPA's latent action model is released as a PyTorch state_dict (``laq_openx.pt``). The
zip holds ``<name>/data.pkl`` (a pickle whose tensors are ``_rebuild_tensor_v2`` calls on
persistent storage ids) and one raw little-endian file per storage under ``<name>/data/``.
Only plain tensors are supported; anything else in the pickle is an error that names it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchCheckpointError(ValueError):
    """A file that is not a plain PyTorch state_dict zip."""


def _bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


class _StorageType:
    def __init__(self, name: str):
        if name == "BFloat16Storage":
            self.dtype = np.dtype(_bfloat16())
        elif name in _STORAGE_DTYPES:
            self.dtype = np.dtype(_STORAGE_DTYPES[name])
        else:
            raise TorchCheckpointError(f"unsupported storage type torch.{name}")


class _Storage:
    """One storage file: its raw bytes and the element count and dtype the pickle declares."""

    def __init__(self, key: str, raw: bytes, dtype: np.dtype, numel: int):
        self.key, self.raw, self.dtype, self.numel = key, raw, dtype, numel


class _TensorRecord:
    """A ``_rebuild_tensor_v2`` call, kept until the tensor's state_dict key is known."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRecord:
    return _TensorRecord(storage, offset, size, stride)


def _extent_problem(record: _TensorRecord) -> str | None:
    """Why the tensor does not lie within its storage, or None; a tensor outside it would read
    memory that is not the checkpoint's."""
    storage, offset, size, stride = record.storage, record.offset, record.size, record.stride
    if not isinstance(storage, _Storage):
        return f"its storage is a {type(storage).__name__}"
    if not (
        isinstance(size, tuple | list)
        and isinstance(stride, tuple | list)
        and all(isinstance(v, int) for v in (offset, storage.numel, *size, *stride))
    ):
        return f"not integers: offset {offset!r}, size {size!r}, stride {stride!r}, numel {storage.numel!r}"
    if len(storage.raw) != storage.numel * storage.dtype.itemsize:
        return (
            f"storage {storage.key} has {len(storage.raw)} bytes, but the checkpoint declares "
            f"{storage.numel} x {storage.dtype} ({storage.numel * storage.dtype.itemsize} bytes)"
        )
    if len(size) != len(stride):
        return f"{len(size)} sizes but {len(stride)} strides"
    if offset < 0 or any(s < 0 for s in stride) or any(n < 0 for n in size):
        return f"negative offset, size or stride (offset {offset}, size {size}, stride {stride})"
    if 0 in size:
        return None if offset <= storage.numel else f"offset {offset} past storage {storage.key}"
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.numel:
        return (
            f"size {size}, stride {stride} and offset {offset} read elements up to {last} of storage "
            f"{storage.key}, which holds {storage.numel}"
        )
    return None


def _materialise(record: _TensorRecord) -> np.ndarray:
    """The tensor's elements, copied out of its storage (checked by ``_extent_problem``)."""
    data = np.frombuffer(record.storage.raw, dtype=record.storage.dtype.newbyteorder("<"))
    if not record.size:
        return data[record.offset].copy()
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[record.offset :], shape=tuple(record.size), strides=tuple(s * itemsize for s in record.stride)
    )
    return np.ascontiguousarray(view)


def load_state_dict(path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """``torch.load(path)`` for a state_dict of plain tensors, as numpy arrays (keys unchanged)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise TorchCheckpointError(
            f"{path}: not a PyTorch zip checkpoint (torch.save with the zip format)"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchCheckpointError(f"{path}: expected one data.pkl, found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if (module, name) == ("collections", "OrderedDict"):
                    return OrderedDict
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return _rebuild_tensor
                if module == "torch" and name.endswith("Storage"):
                    try:
                        return _StorageType(name)
                    except TorchCheckpointError as e:
                        raise TorchCheckpointError(f"{path}: {e}") from None
                raise TorchCheckpointError(f"{path}: unsupported object {module}.{name} in the checkpoint")

            def persistent_load(self, pid: Any) -> _Storage:
                if not (
                    isinstance(pid, tuple)
                    and len(pid) == 5
                    and pid[0] == "storage"
                    and isinstance(pid[1], _StorageType)
                ):
                    raise TorchCheckpointError(f"{path}: unsupported persistent id {pid!r}")
                _, storage_type, key, _location, numel = pid
                if key not in storages:
                    member = f"{root}data/{key}"
                    if member not in names:
                        raise TorchCheckpointError(f"{path}: storage {key} is missing ({member})")
                    storages[key] = _Storage(key, archive.read(member), storage_type.dtype, numel)
                return storages[key]

        names = set(archive.namelist())
        try:
            with archive.open(pickles[0]) as f:
                state = Unpickler(f).load()
        except TorchCheckpointError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            zipfile.BadZipFile,
            ValueError,
            TypeError,
            AttributeError,
        ) as e:
            raise TorchCheckpointError(f"{path}: damaged checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise TorchCheckpointError(f"{path}: expected a state_dict, got {type(state).__name__}")
    tensors: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, record in state.items():
        if not isinstance(record, _TensorRecord):
            raise TorchCheckpointError(f"{path}: {key} is a {type(record).__name__}, not a plain tensor")
        if problem := _extent_problem(record):
            raise TorchCheckpointError(f"{path}: tensor {key}: {problem}")
        tensors[key] = _materialise(record)
    return tensors
