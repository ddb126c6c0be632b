"""The server's wire formats: json_numpy arrays (OpenVLA's REST clients), base64 PNG/JPEG images and
msgpack-numpy frames (openpi's websocket clients). Decoding is strict: a malformed value is a
ValueError saying what is wrong, never a pickle or an object array."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any

import json_numpy
import msgpack
import numpy as np
from PIL import Image

NUMERIC_KINDS = "biuf"  # the dtype kinds an array may arrive in (bool, int, uint, float)
MAX_PIXELS = 1 << 25  # 32M pixels: a larger image is refused before it is decoded
IMAGE_FORMATS = ("PNG", "JPEG")
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
DATA_URL_PREFIXES = ("data:image/png;base64,", "data:image/jpeg;base64,", "data:image/jpg;base64,")


def numeric_dtype(dtype: Any, where: str) -> np.dtype:
    """The dtype a string such as ``<f4`` or ``|u1`` names; a ValueError unless it is a number type."""
    try:
        dt = np.dtype(dtype) if isinstance(dtype, str) else None
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.kind not in NUMERIC_KINDS:
        raise ValueError(f"{where}: dtype {dtype!r} is not a number type")
    return dt


def array_from_bytes(data: Any, dtype: Any, shape: Any, where: str) -> np.ndarray:
    """A read-only array of raw bytes with this dtype string and shape, checked against each other."""
    dt = numeric_dtype(dtype, where)
    if not isinstance(data, bytes):
        raise ValueError(f"{where}: the data is {type(data).__name__}, not bytes")
    if not isinstance(shape, list | tuple) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ValueError(f"{where}: shape {shape!r} is not a list of sizes")
    if math.prod(shape) * dt.itemsize != len(data):
        raise ValueError(f"{where}: {len(data)} bytes do not fill shape {list(shape)} of {dt}")
    return np.frombuffer(data, dt).reshape(shape)


def _json_numpy_hook(obj: dict[str, Any]) -> Any:
    if "__numpy__" not in obj:
        return obj
    try:
        data = base64.b64decode(obj["__numpy__"], validate=True)
    except (binascii.Error, TypeError):
        raise ValueError("a json_numpy array whose data is not base64") from None
    return array_from_bytes(data, obj.get("dtype"), obj.get("shape"), "a json_numpy array")


def loads_json(text: str | bytes) -> Any:
    """JSON with json_numpy's ``{"__numpy__": base64, "dtype": ..., "shape": [...]}`` objects as arrays."""
    try:
        return json.loads(text, object_hook=_json_numpy_hook)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps_json(value: Any) -> str:
    """JSON with arrays as json_numpy writes them (what ``json_numpy.loads`` reads back)."""
    return json_numpy.dumps(value)


def image_bytes(text: str) -> bytes | None:
    """The PNG/JPEG file in a base64 string (bare, or a ``data:image/...;base64,`` URL); None when the
    string is neither (a bare string that is not base64 of a PNG or JPEG, e.g. a file path)."""
    prefix = next((p for p in DATA_URL_PREFIXES if text.startswith(p)), None)
    try:
        data = base64.b64decode(text[len(prefix or "") :], validate=True)
    except binascii.Error:
        if prefix is not None:
            raise ValueError("image: the data URL holds no valid base64") from None
        return None
    if prefix is None and not data.startswith(IMAGE_MAGIC):
        return None
    return data


def decode_image(data: bytes, where: str = "image") -> np.ndarray:
    """uint8 [H, W] (greyscale), [H, W, 3] or [H, W, 4] pixels of a PNG or JPEG file."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{where}: {image.width}x{image.height} pixels; at most {MAX_PIXELS}")
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
            return np.asarray(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{where}: not a readable PNG or JPEG ({e})") from None


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) and obj.dtype.kind in NUMERIC_KINDS:
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic) and obj.dtype.kind in NUMERIC_KINDS:
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot pack {type(obj).__name__}")


def _unpack_hook(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj:
        return array_from_bytes(obj.get(b"data"), obj.get(b"dtype"), obj.get(b"shape"), "a msgpack array")
    if b"__npgeneric__" in obj:
        dt = numeric_dtype(obj.get(b"dtype"), "a msgpack scalar")
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, OverflowError):
            raise ValueError(f"a msgpack scalar: {obj.get(b'data')!r} is not a {dt}") from None
    return obj


def pack_frame(value: Any) -> bytes:
    """msgpack bytes with arrays as openpi's ``msgpack_numpy`` packs them."""
    return msgpack.packb(value, default=_pack_default)


def unpack_frame(data: bytes) -> Any:
    """The value of an openpi ``msgpack_numpy`` frame; a ValueError when it is not one."""
    try:
        return msgpack.unpackb(data, object_hook=_unpack_hook)
    except (ValueError, TypeError) as e:  # msgpack's own errors are ValueErrors
        raise ValueError(f"not a msgpack-numpy frame ({e})") from None
