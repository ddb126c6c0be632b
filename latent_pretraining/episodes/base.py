"""The episode every reader returns, and the image-file helpers they share."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Episode:
    """One video. ``load(t)`` returns frame t as uint8 [H, W, 3] RGB.

    ``actions[t]`` is the action taken at frame t: float [num_frames - 1, A] (no action after the
    last frame) or [num_frames, A]; None when unknown. ``image_paths`` lists the frame files
    when frames are files (None for videos and RLDS episodes).
    """

    episode_id: str
    num_frames: int
    instruction: str
    load: Callable[[int], np.ndarray]
    image_paths: list[str] | None = None
    actions: np.ndarray | None = None
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"episode {self.episode_id!r} has no frames")
        if self.image_paths is not None and len(self.image_paths) != self.num_frames:
            raise ValueError(
                f"episode {self.episode_id!r}: {len(self.image_paths)} image paths, {self.num_frames} frames"
            )
        if self.actions is not None:
            self.actions = np.asarray(self.actions, np.float64)
            rows = (self.num_frames - 1, self.num_frames)
            if self.actions.ndim != 2 or self.actions.shape[0] not in rows:
                raise ValueError(
                    f"episode {self.episode_id!r}: actions of shape {self.actions.shape}, expected "
                    f"[{rows[0]} or {rows[1]}, A] for {self.num_frames} frames"
                )

    def frame(self, t: int) -> np.ndarray:
        """Frame t (bounds-checked)."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"episode {self.episode_id!r} has {self.num_frames} frames; asked for frame {t}")
        return self.load(int(t))


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders digits by value: ``2.png`` < ``10.png``."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", text))]


def load_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] from any file PIL reads."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """``load_image`` whose error names the file."""
    try:
        return load_image(path)
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def file_loader(paths: Sequence[str]) -> Callable[[int], np.ndarray]:
    """``Episode.load`` for frames stored as image files, read when asked for."""
    return lambda t: read_image(paths[t])
