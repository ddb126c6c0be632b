"""Image-sequence folders, and the tabletop world's export (``index.json`` + ``frames.jsonl``)."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import numpy as np

from latent_pretraining.core.jsonl import read_jsonl_objects
from latent_pretraining.episodes.base import IMAGE_SUFFIXES, Episode, file_loader, natural_key

TABLETOP_EXPORT = "the folder written by `python -m data.make_tabletop --out DIR` (DIR or DIR/videos)"


def image_folders(root: str | Path, fps: float | None = None) -> list[Episode]:
    """Image-sequence folders under ``root``.

    If ``root`` is the tabletop world's export (it or ``root/videos`` holds ``index.json``), the
    episodes are the export's (``tabletop_export``). Otherwise every directory under ``root`` that
    directly holds image files is one episode (id: its path relative to ``root``), frames in
    natural order, instruction from an optional ``instruction.txt``. ``fps`` (frames per second
    of every folder) enables ``frame_pairs(offset_seconds=...)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    index = _export_index(root)
    if index is not None:
        return _read_export(index, fps)
    episodes = []
    for folder, _, files in os.walk(root):
        images = sorted((f for f in files if f.lower().endswith(IMAGE_SUFFIXES)), key=natural_key)
        if not images:
            continue
        folder = Path(folder)
        rel = folder.relative_to(root).as_posix()
        note = folder / "instruction.txt"
        paths = [str(folder / f) for f in images]
        episodes.append(
            Episode(
                episode_id=root.name if rel == "." else rel,
                num_frames=len(paths),
                instruction=note.read_text().strip() if note.is_file() else "",
                load=file_loader(paths),
                image_paths=paths,
                fps=fps,
            )
        )
    if not episodes:
        raise ValueError(f"no folder under {root} holds images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(episodes, key=lambda e: natural_key(e.episode_id))


def tabletop_export(root: str | Path, fps: float | None = None) -> list[Episode]:
    """The tabletop world's export: episodes, instructions and frame files from ``index.json``,
    actions from ``frames.jsonl``'s ``raw_actions`` fields. Refuses a folder that is not one."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"tabletop export {root} does not exist; expected {TABLETOP_EXPORT}")
    index = _export_index(root)
    if index is None:
        raise FileNotFoundError(
            f"{root} has no index.json or videos/index.json, so it is not a tabletop export; "
            f"expected {TABLETOP_EXPORT}"
        )
    return _read_export(index, fps)


def _export_index(root: Path) -> Path | None:
    """The export's ``index.json`` in ``root`` or ``root/videos``; None when there is none."""
    return next((p for p in (root / "index.json", root / "videos" / "index.json") if p.is_file()), None)


def _read_export(index_path: Path, fps: float | None) -> list[Episode]:
    """The export's ``videos/``: ``index.json`` plus per-frame actions from ``frames.jsonl``."""
    try:
        index = json.loads(index_path.read_text())
        pattern = index["frame_pattern"]
        entries = index["episodes"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index_path}: not a tabletop index (needs frame_pattern and episodes): {e}") from e
    actions = _export_actions(index_path.parent / "frames.jsonl")
    episodes = []
    for i, entry in enumerate(entries):
        try:
            episode_id, n = str(entry["episode_id"]), int(entry["num_frames"])
            paths = [
                str(index_path.parent / pattern.format(frames_dir=entry["frames_dir"], t=t)) for t in range(n)
            ]
            instruction = str(entry.get("instruction", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{index_path}: episodes[{i}]: missing or bad field {e}") from e
        episodes.append(
            Episode(episode_id, n, instruction, file_loader(paths), paths, actions.get(episode_id), fps)
        )
    if not episodes:
        raise ValueError(f"{index_path} lists no episodes")
    return episodes


def _export_actions(frames_jsonl: Path) -> dict[str, np.ndarray]:
    """episode id -> actions [num_frames - 1, A] from the ``raw_actions`` field of the frame rows
    (empty when the export predates that field)."""
    if not frames_jsonl.is_file():
        return {}
    by_episode: dict[str, dict[int, list[float]]] = collections.defaultdict(dict)
    for _, row in read_jsonl_objects(frames_jsonl):
        if "raw_actions" in row:
            by_episode[str(row["episode_id"])][int(row["t"])] = row["raw_actions"]
    out = {}
    for episode_id, steps in by_episode.items():
        if sorted(steps) != list(range(len(steps))):
            raise ValueError(f"{frames_jsonl}: episode {episode_id!r} has actions for frames {sorted(steps)}")
        out[episode_id] = np.asarray([steps[t] for t in range(len(steps))], np.float64)
    return out
