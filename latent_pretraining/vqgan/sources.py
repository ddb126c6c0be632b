"""Image sources for tokenizer training: a folder, an RLDS dataset, or the tabletop world.

Each is an indexable collection of uint8 RGB images (``len`` and ``[i]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from latent_pretraining.vqgan.images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class FolderImages:
    """Every image file under a folder (recursively), in sorted order; read lazily."""

    def __init__(self, root: str | Path, limit: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit:
            self.paths = self.paths[:limit]
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            return load_image(self.paths[i])
        except Exception as e:  # name the file that failed
            raise ValueError(f"cannot read image {self.paths[i]}: {e}") from e


class ArrayImages:
    """Images held in memory."""

    def __init__(self, images: list[np.ndarray] | np.ndarray):
        self.images = images
        if len(images) == 0:
            raise ValueError("no images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.images[i])


def rlds_images(
    path: str | Path, limit: int = 0, image_key: str = "image", split: str = "train"
) -> ArrayImages:
    """Frames ``steps/observation/<image_key>`` of an RLDS dataset directory (Open X-Embodiment layout)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO/WARNING start-up lines
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its oneDNN notice (tf only reads records here)
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(path))
    images: list[np.ndarray] = []
    for episode in tfds.as_numpy(builder.as_dataset(split=split)):
        for step in episode["steps"]:
            images.append(step["observation"][image_key])
            if limit and len(images) >= limit:
                return ArrayImages(images)
    return ArrayImages(images)


def tabletop_images(count: int, image_size: int, seed: int = 0) -> ArrayImages:
    """Frames of scripted tabletop episodes (``sim``), generated on the spot."""
    from sim.env import EnvConfig, TabletopEnv
    from sim.expert import ScriptedExpert

    env = TabletopEnv(EnvConfig(image_size=image_size))
    images: list[np.ndarray] = []
    episode = 0
    while len(images) < count:
        images.append(env.reset(seed + episode))
        expert = ScriptedExpert(env.task, noise=0.1, rng=np.random.default_rng(seed + episode))
        done = False
        while not done and len(images) < count:
            image, _, done, _ = env.step(expert.act(env.state))
            images.append(image)
        episode += 1
    return ArrayImages(images)


def open_source(kind: str, path: str, limit: int, image_size: int, seed: int) -> FolderImages | ArrayImages:
    if kind == "folder":
        return FolderImages(path, limit)
    if kind == "rlds":
        return rlds_images(path, limit)
    if kind == "tabletop":
        return tabletop_images(limit or 4096, image_size, seed)
    raise ValueError(f"unknown image source {kind!r}; choose folder, rlds or tabletop")
