"""RLDS (TFDS) dataset of tabletop episodes, in Open X-Embodiment's step layout.

Episodes are written as real TFRecord files by a ``GeneratorBasedBuilder`` and read
back with ``tfds.builder_from_directory(<dir>/tabletop/1.0.0)``. Each step holds
``observation/{image, state}``, ``action`` (7 floats), ``language_instruction``,
``is_first``, ``is_last``, ``is_terminal``, ``reward`` and ``discount``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from latent_pretraining.core.quiet import import_tfds

tfds = import_tfds()

STATE_DIM = 5  # gripper x, y, z, yaw, closed


class TabletopRlds(tfds.core.GeneratorBasedBuilder):
    """Episodes of the synthetic tabletop world (see sim/)."""

    name = "tabletop"  # the directory readers see: <data_dir>/tabletop/1.0.0
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}

    def __init__(
        self, *, episodes: Callable[[], Iterable[dict[str, Any]]] = tuple, image_size: int = 64, **kwargs
    ):
        self._episodes = episodes  # called when writing: episodes stream, they are never all in memory
        self._image_size = image_size
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self._image_size
        step = tfds.features.FeaturesDict(
            {
                "observation": tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                        "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
                    }
                ),
                "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                "language_instruction": tfds.features.Text(),
                "is_first": tfds.features.Scalar(dtype=np.bool_),
                "is_last": tfds.features.Scalar(dtype=np.bool_),
                "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                "reward": tfds.features.Scalar(dtype=np.float32),
                "discount": tfds.features.Scalar(dtype=np.float32),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic tabletop manipulation episodes with a scripted expert.",
            features=tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(step),
                    "episode_metadata": tfds.features.FeaturesDict(
                        {
                            "episode_id": tfds.features.Text(),
                            "task": tfds.features.Text(),
                            "success": tfds.features.Scalar(dtype=np.bool_),
                        }
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for episode in self._episodes():
            yield episode["episode_id"], episode_to_rlds(episode)


def episode_to_rlds(episode: dict[str, Any]) -> dict[str, Any]:
    """One recorded episode -> an RLDS example. Step t holds the frame before action t;
    a final step holds the last frame with a zero action."""
    frames, actions, states = episode["frames"], episode["actions"], episode["states"]
    steps = []
    n = len(actions)
    for t in range(n + 1):
        last = t == n
        steps.append(
            {
                "observation": {"image": frames[t], "state": states[t].astype(np.float32)},
                "action": (np.zeros(7) if last else actions[t]).astype(np.float32),
                "language_instruction": episode["instruction"],
                "is_first": t == 0,
                "is_last": last,
                "is_terminal": last and episode["success"],
                "reward": float(last and episode["success"]),
                "discount": 1.0,
            }
        )
    return {
        "steps": steps,
        "episode_metadata": {
            "episode_id": episode["episode_id"],
            "task": episode["task"],
            "success": episode["success"],
        },
    }


def write_rlds(episodes: Callable[[], Iterable[dict[str, Any]]], data_dir: Path, image_size: int) -> Path:
    """Writes the episodes that ``episodes()`` yields as TFRecords under ``data_dir``;
    returns the versioned dataset directory."""
    builder = TabletopRlds(episodes=episodes, image_size=image_size, data_dir=str(data_dir))
    # tfds prints 'Downloading and preparing dataset ...' to stdout although nothing is downloaded
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return Path(builder.data_dir)
