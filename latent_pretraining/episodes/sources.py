"""One entry point over every episode reader, and a flat view of all frames for the image tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from latent_pretraining.episodes.base import Episode
from latent_pretraining.episodes.folders import TABLETOP_EXPORT, image_folders, tabletop_export
from latent_pretraining.episodes.jsonl import jsonl_frames
from latent_pretraining.episodes.rlds import rlds_episodes
from latent_pretraining.episodes.videos import video_files

# kind -> (reader, what its path names)
READERS: dict[str, tuple[Callable[..., list[Episode]], str]] = {
    "folder": (image_folders, "a folder of image-sequence folders"),
    "video": (video_files, "a video file or a folder of them"),
    "rlds": (rlds_episodes, "an RLDS dataset directory (e.g. .../1.0.0)"),
    "jsonl": (jsonl_frames, "a LAPA-style JSONL file with image paths"),
    "tabletop": (tabletop_export, TABLETOP_EXPORT),
}
SOURCE_KINDS = tuple(READERS)


def check_source(kind: str, path: str, path_name: str = "path") -> None:
    """Refuses an unknown ``kind`` or an empty ``path`` (named ``path_name`` in the error, e.g. the
    caller's flag), saying what the path of that kind should name."""
    if kind not in READERS:
        raise ValueError(f"unknown episode source {kind!r}; choose from {', '.join(SOURCE_KINDS)}")
    if not str(path):
        raise ValueError(f"the {kind} source needs {path_name}: {READERS[kind][1]}")


def open_episodes(kind: str, path: str, **options: Any) -> list[Episode]:
    """Episodes of the source of ``kind`` (one of ``SOURCE_KINDS``) at ``path``; options go to its reader."""
    check_source(kind, path)
    return READERS[kind][0](path, **options)


class EpisodeFrames:
    """Every frame of ``episodes`` in order, as one indexable collection of uint8 RGB images
    (``len`` and ``[i]``); the first ``limit`` frames when ``limit`` > 0. Frames load when asked for."""

    def __init__(self, episodes: Sequence[Episode], limit: int = 0):
        self.episodes = list(episodes)
        self.starts = np.cumsum([0] + [e.num_frames for e in self.episodes])
        total = int(self.starts[-1])
        self.count = min(total, limit) if limit > 0 else total
        if self.count == 0:
            raise ValueError("no frames: the source has no episodes")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.count:
            raise IndexError(f"frame {i} of {self.count}")
        episode = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.episodes[episode].frame(int(i - self.starts[episode]))
