"""PNG grids for inspecting the latent action model (numpy + PIL only).

Images are float arrays in [0, 1] shaped ``[..., H, W, 3]`` (one channel is shown as grey).
Grids have 2-pixel white separators between cells and are written atomically (a temporary file in the
target folder, then ``os.replace``), so a reader never sees a half-written PNG.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SEPARATOR = 2
SEPARATOR_VALUE = 255
RECONSTRUCTIONS_FILE = "reconstructions.npz"  # the last evaluation's pairs, beside quality.json


def to_uint8(x: Any) -> np.ndarray:
    """Floats in [0, 1] -> uint8 in [0, 255] (rounded, clipped; NaN becomes 0)."""
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _rgb(x: Any) -> np.ndarray:
    """Float array with 3 channels (one channel is repeated as grey); shape checks are the caller's."""
    x = np.asarray(x, np.float64)
    if x.ndim >= 1 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tiles equally sized ``[H, W, 3]`` uint8 cells with separators between rows and columns."""
    height, width, _ = rows[0][0].shape
    n_rows, n_cols = len(rows), len(rows[0])
    out = np.full(
        (n_rows * height + (n_rows - 1) * SEPARATOR, n_cols * width + (n_cols - 1) * SEPARATOR, 3),
        SEPARATOR_VALUE,
        np.uint8,
    )
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            top, left = r * (height + SEPARATOR), c * (width + SEPARATOR)
            out[top : top + height, left : left + width] = cell
    return out


def _save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    return _save_atomically(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def _save_atomically(path: str | os.PathLike, write) -> Path:
    """``write(file)`` into a temporary file beside ``path``, then renamed to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_reconstruction_grid(
    first: Any,
    target: Any,
    recon: Any,
    path: str | os.PathLike,
    max_rows: int = 8,
    error_gain: float = 4.0,
) -> Path:
    """One row per pair: ``x_t | x_{t+H} | reconstruction | |error|``; returns the path.

    ``first``, ``target``, ``recon`` are ``[B, H, W, 3]`` in [0, 1]; the first ``max_rows`` pairs are
    drawn. The error column is ``clip(|recon - target| * error_gain, 0, 1)``: black where the
    reconstruction is exact.
    """
    first, target, recon = _rgb(first), _rgb(target), _rgb(recon)
    if not first.shape == target.shape == recon.shape or first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(
            f"first, target, recon must share one [B, H, W, 3] shape, got "
            f"{first.shape}, {target.shape}, {recon.shape}"
        )
    rows = min(first.shape[0], max_rows)
    if rows < 1:
        raise ValueError(f"nothing to draw: batch {first.shape[0]}, max_rows {max_rows}")
    error = np.clip(np.abs(recon - target) * error_gain, 0.0, 1.0)
    cells = [[to_uint8(a[i]) for a in (first, target, recon, error)] for i in range(rows)]
    return _save_png(_grid(cells), path)


def save_reconstruction_arrays(first: Any, target: Any, recon: Any, path: str | os.PathLike) -> Path:
    """The same pairs as uint8 arrays ``current``, ``future``, ``reconstruction`` (``[B, H, W, 3]``) in
    an ``.npz``, for the pipeline report's labelled figure; returns the path."""
    arrays = {"current": first, "future": target, "reconstruction": recon}
    arrays = {name: to_uint8(_rgb(a)) for name, a in arrays.items()}
    return _save_atomically(path, lambda f: np.savez_compressed(f, **arrays))


def save_same_code_grid(firsts: Any, recons_by_code: Any, path: str | os.PathLike) -> Path:
    """ "Same code on different frames": row r = starting frame r, column 0 = that frame, column 1 + c =
    its decoding with code tuple c; returns the path.

    ``firsts`` is ``[R, H, W, 3]`` and ``recons_by_code`` is ``[C, R, H, W, 3]``, both in [0, 1].
    """
    firsts, recons = _rgb(firsts), _rgb(recons_by_code)
    if firsts.ndim != 4 or firsts.shape[-1] != 3 or recons.ndim != 5 or recons.shape[1:] != firsts.shape:
        raise ValueError(
            f"need firsts [R, H, W, 3] and recons_by_code [C, R, H, W, 3], got {firsts.shape}, {recons.shape}"
        )
    if firsts.shape[0] == 0:
        raise ValueError("nothing to draw: no starting frames")
    cells = [
        [to_uint8(firsts[r])] + [to_uint8(recons[c, r]) for c in range(recons.shape[0])]
        for r in range(firsts.shape[0])
    ]
    return _save_png(_grid(cells), path)
