"""Image preprocessing for the VQGAN, as LAPA does it, plus the training augmentation
and its deterministic inference counterpart.

LAPA (albumentations): longest side to 256 keeping the aspect ratio, then resize to
256x256, then ``x / 127.5 - 1``. Its training augmentation adds a random square crop
of 90% of the area resized back, brightness/contrast +-0.2 and small hue /
saturation / value shifts. Its deploy path skipped the crop, so the policy saw
images at a different zoom than in training; here held-out rows and inference use
the centred crop of the same size (mode ``center_crop``), the deterministic counterpart.

Resizing follows OpenCV's ``INTER_LINEAR`` sampling (half-pixel centres, no
anti-aliasing) in float, so results can differ from OpenCV by one grey level.
"""

from __future__ import annotations

import math

import numpy as np

CROP_AREA = 0.9  # LAPA's RandomResizedCrop scale


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with OpenCV's INTER_LINEAR coordinate mapping; uint8 in, uint8 out."""
    src = image.astype(np.float32)
    h, w = src.shape[:2]
    if (h, w) == (height, width):
        return image.copy()

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5
        pos = np.clip(pos, 0, size - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    rows = src[y0] * (1 - fy)[:, None, None] + src[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def lapa_resize(image: np.ndarray, size: int = 256) -> np.ndarray:
    """LAPA's ``LongestMaxSize(size)`` then ``Resize(size, size)``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale != 1.0:
        image = resize_linear(image, max(1, round(h * scale)), max(1, round(w * scale)))
    return resize_linear(image, size, size)


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], as LAPA feeds the VQGAN."""
    return (image.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def crop_side(size: int, area: float = CROP_AREA) -> int:
    return round(math.sqrt(area) * size)


def center_crop(image: np.ndarray, area: float = CROP_AREA) -> np.ndarray:
    """The centred square crop of ``area`` of a square image, resized back: the
    deterministic counterpart of the training crop."""
    size = image.shape[0]
    side = crop_side(size, area)
    top = (size - side) // 2
    return resize_linear(image[top : top + side, top : top + side], size, size)


def _hsv_shift(image: np.ndarray, hue_deg: float, sat: float, val: float) -> np.ndarray:
    """Hue rotation (in the YIQ chroma plane), saturation and value shifts; float in/out."""
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
    c, s = math.cos(math.radians(hue_deg)), math.sin(math.radians(hue_deg))
    rotate = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    rotate[1:, 1:] *= 1.0 + sat / 255.0
    matrix = np.linalg.inv(yiq) @ rotate @ yiq
    return image @ matrix.T + val


def augment(image: np.ndarray, rng: np.random.Generator, area: float = CROP_AREA) -> np.ndarray:
    """LAPA's training augmentation on a square uint8 image: random crop of ``area``
    resized back, brightness/contrast +-0.2, hue +-10 degrees, saturation and value +-20."""
    size = image.shape[0]
    side = crop_side(size, area)
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    image = resize_linear(image[top : top + side, left : left + side], size, size).astype(np.float32)
    alpha = 1.0 + rng.uniform(-0.2, 0.2)
    beta = rng.uniform(-0.2, 0.2) * 255.0
    image = image * alpha + beta
    image = _hsv_shift(image, rng.uniform(-10, 10), rng.uniform(-20, 20), rng.uniform(-20, 20))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# named preprocessing modes (big_vision's pp / pp_eval): ``resize`` is LAPA's plain resize (how
# its data were pre-tokenised), ``augment`` its random training augmentation, ``center_crop``
# the deterministic counterpart of ``augment`` for held-out rows and deployment
PP_MODES = ("resize", "augment", "center_crop")


def eval_mode(train_mode: str) -> str:
    """The deterministic mode for held-out rows and deployment of a model trained with ``train_mode``."""
    check_mode(train_mode)
    return "center_crop" if train_mode == "augment" else train_mode


def check_mode(mode: str) -> None:
    if mode not in PP_MODES:
        raise ValueError(f"image preprocessing mode {mode!r} is not one of {', '.join(PP_MODES)}")


def preprocess(
    image: np.ndarray, size: int = 256, mode: str = "resize", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Any uint8 RGB image -> float32 [size, size, 3] in [-1, 1] in one of ``PP_MODES``
    (``augment`` draws from ``rng``)."""
    check_mode(mode)
    image = lapa_resize(image, size)
    if mode == "augment":
        if rng is None:
            raise ValueError("mode 'augment' needs an rng")
        image = augment(image, rng)
    elif mode == "center_crop":
        image = center_crop(image)
    return to_model_range(image)
