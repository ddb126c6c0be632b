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


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    if not size:
        return storage[offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
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
        storages: dict[str, np.ndarray] = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if (module, name) == ("collections", "OrderedDict"):
                    return OrderedDict
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return _rebuild_tensor
                if module == "torch" and name.endswith("Storage"):
                    return _StorageType(name)
                raise TorchCheckpointError(f"{path}: unsupported object {module}.{name} in the checkpoint")

            def persistent_load(self, pid: Any) -> np.ndarray:
                if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                    raise TorchCheckpointError(f"{path}: unsupported persistent id {pid!r}")
                _, storage_type, key, _location, _numel = pid
                if key not in storages:
                    raw = archive.read(f"{root}data/{key}")
                    storages[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))
                return storages[key]

        with archive.open(pickles[0]) as f:
            state = Unpickler(f).load()
    if not isinstance(state, dict):
        raise TorchCheckpointError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return OrderedDict((k, v) for k, v in state.items())
