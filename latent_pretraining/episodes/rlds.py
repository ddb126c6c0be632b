"""RLDS / Open X-Embodiment dataset directories, read with ``tensorflow_datasets``."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from latent_pretraining.core.quiet import import_tfds
from latent_pretraining.episodes.base import Episode


def rlds_episodes(
    path: str | Path,
    image_key: str = "image",
    split: str = "train",
    fps: float | None = None,
    max_frames: int = 0,
) -> list[Episode]:
    """Episodes of an RLDS dataset directory (Open X-Embodiment layout), via ``tfds.builder_from_directory``.

    Frames: ``steps/observation/<image_key>``, kept encoded (PNG/JPEG bytes, one episode's worth per
    Episode) and decoded on each ``load``. Instruction: ``steps/language_instruction`` or
    ``steps/observation/natural_language_instruction`` of the first step. Actions: ``steps/action``,
    one row per step (so [num_frames, A]); a dict of vectors is flattened and concatenated in
    sorted key order. Episode id: ``episode_metadata/episode_id`` when present, else ``<split>_<i>``.
    ``max_frames`` > 0 stops reading after the episode that brings the frame count to it.
    """
    tfds = import_tfds()  # here, not at import: reading the other sources needs no TensorFlow
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"RLDS dataset directory {path} does not exist")
    builder = tfds.builder_from_directory(str(path))
    observation = builder.info.features["steps"]["observation"]
    if image_key not in observation:
        raise KeyError(
            f"{path}: no steps/observation/{image_key!r}; observation keys: {sorted(observation.keys())}"
        )
    encoded = isinstance(observation[image_key], tfds.features.Image)
    decoders = {"steps": {"observation": {image_key: tfds.decode.SkipDecoding()}}} if encoded else None
    dataset = builder.as_dataset(split=split, decoders=decoders)
    episodes: list[Episode] = []
    frames_read = 0
    for i, example in enumerate(tqdm(tfds.as_numpy(dataset), desc=f"rlds {path.name}", unit="episode")):
        steps = list(example["steps"])
        if not steps:
            continue
        frames = [step["observation"][image_key] for step in steps]
        metadata = example.get("episode_metadata", {})
        episode_id = _text(metadata["episode_id"]) if "episode_id" in metadata else f"{split}_{i:06d}"
        actions = np.stack([_flat_action(step["action"]) for step in steps]) if "action" in steps[0] else None
        load = _encoded_loader(frames, f"{path}:{episode_id}") if encoded else _array_loader(frames)
        episodes.append(
            Episode(episode_id, len(frames), _rlds_instruction(steps[0]), load, None, actions, fps)
        )
        frames_read += len(frames)
        if max_frames and frames_read >= max_frames:
            break
    if not episodes:
        raise ValueError(f"{path}: split {split!r} has no episodes with steps")
    return episodes


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rlds_instruction(step: dict) -> str:
    if "language_instruction" in step:
        return _text(step["language_instruction"])
    return _text(step["observation"].get("natural_language_instruction", b""))


def _flat_action(action: Any) -> np.ndarray:
    """A vector, or a (nested) dict of vectors concatenated in sorted key order."""
    if isinstance(action, dict):
        return np.concatenate([_flat_action(action[k]) for k in sorted(action)])
    return np.asarray(action, np.float64).reshape(-1)


def _array_loader(frames: Sequence[np.ndarray]) -> Callable[[int], np.ndarray]:
    return lambda t: np.asarray(frames[t])


def _encoded_loader(encoded: Sequence[bytes], where: str) -> Callable[[int], np.ndarray]:
    def load(t: int) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(encoded[t])) as image:
                return np.asarray(image.convert("RGB"))
        except Exception as e:
            raise ValueError(f"cannot decode frame {t} of {where}: {e}") from e

    return load
