"""Frame pairs for the latent action model: episodes from any source, (t, t+H) pairs, batches.

The LAM sees frame ``x_t`` and ``x_{t+H}`` of a video and learns discrete codes for the change.

Sources (each returns ``list[Episode]``; ``open_episodes(kind, path, **options)`` dispatches):

    folder    image-sequence folders, or the tabletop export's ``videos/`` (``image_folders``)
    video     .mp4 .avi .mov .mkv .webm .gif files, decoded with PyAV (``video_files``)
    rlds      an RLDS / Open X-Embodiment dataset directory (``rlds_episodes``)
    jsonl     LAPA-style JSONL rows with image paths (``jsonl_frames``)
    tabletop  expert episodes of the synthetic world, simulated on the spot (``tabletop_episodes``)

Memory: folder and JSONL episodes read each frame from disk when asked; videos are decoded
whole on first use and kept in a small LRU of decoded files; RLDS episodes keep their frames
*encoded* (PNG/JPEG bytes) and decode one frame per call; tabletop episodes hold their frames.

Pairs are int64 rows ``(episode index, t, t2)`` (``frame_pairs``); ``PairBatches.make_batch``
turns rows into ``{"frames": float32 [B, 2, S, S, 3] in [0, 1]}`` (LAPA's LAQ preprocessing: PIL
bilinear resize to S x S, then / 255) plus ``"actions"`` when every episode has ground-truth
actions, and ``pair_stream`` wraps that in the shared per-host resumable ``BatchStream``.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from latent_pretraining.actions.spec import DELTA_DIMS
from latent_pretraining.core.batches import BatchStream
from latent_pretraining.core.files import resolve_under
from latent_pretraining.vqgan.images import load_image
from latent_pretraining.vqgan.sources import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
SOURCE_KINDS = ("folder", "video", "rlds", "jsonl", "tabletop")


@dataclass
class Episode:
    """One video. ``load(t)`` returns frame t as uint8 [H, W, 3] RGB.

    ``actions[t]`` is the action taken at frame t: float [num_frames - 1, A] (no action after the
    last frame) or [num_frames, A]; None when unknown. ``image_paths`` lists the frame files
    when frames are files (None for videos, RLDS and simulated episodes).
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


# ----------------------------------------------------------------------------- helpers


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders digits by value: ``2.png`` < ``10.png``."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", text))]


def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3]; the error names the file."""
    try:
        return load_image(path)
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def _file_loader(paths: Sequence[str]) -> Callable[[int], np.ndarray]:
    return lambda t: read_image(paths[t])


def _array_loader(frames: Sequence[np.ndarray]) -> Callable[[int], np.ndarray]:
    return lambda t: np.asarray(frames[t])


# ----------------------------------------------------------------------------- folders


def image_folders(root: str | Path, fps: float | None = None) -> list[Episode]:
    """Image-sequence folders under ``root``.

    If ``root/index.json`` (or ``root/videos/index.json``) exists, ``root`` is the tabletop
    world's export (``data/make_tabletop.py``): episodes, instructions and frame files come from
    the index, actions from ``frames.jsonl``'s ``raw_actions`` fields. Otherwise every directory
    under ``root`` that directly holds image files is one episode (id: its path relative to
    ``root``), frames in natural order, instruction from an optional ``instruction.txt``.
    ``fps`` (frames per second of every folder) enables ``frame_pairs(offset_seconds=...)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    for index in (root / "index.json", root / "videos" / "index.json"):
        if index.is_file():
            return _tabletop_export(index, fps)
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
                load=_file_loader(paths),
                image_paths=paths,
                fps=fps,
            )
        )
    if not episodes:
        raise ValueError(f"no folder under {root} holds images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(episodes, key=lambda e: natural_key(e.episode_id))


def _tabletop_export(index_path: Path, fps: float | None) -> list[Episode]:
    """The tabletop export's ``videos/``: ``index.json`` plus per-frame actions from ``frames.jsonl``."""
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
            Episode(episode_id, n, instruction, _file_loader(paths), paths, actions.get(episode_id), fps)
        )
    if not episodes:
        raise ValueError(f"{index_path} lists no episodes")
    return episodes


def _export_actions(frames_jsonl: Path) -> dict[str, np.ndarray]:
    """episode id -> actions [num_frames - 1, A] from the ``action`` field of the frame rows
    (empty when the export predates that field)."""
    if not frames_jsonl.is_file():
        return {}
    by_episode: dict[str, dict[int, list[float]]] = collections.defaultdict(dict)
    with open(frames_jsonl) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{frames_jsonl}:{line_no}: not valid JSON: {e}") from e
            if "raw_actions" in row:
                by_episode[str(row["episode_id"])][int(row["t"])] = row["raw_actions"]
    out = {}
    for episode_id, steps in by_episode.items():
        if sorted(steps) != list(range(len(steps))):
            raise ValueError(f"{frames_jsonl}: episode {episode_id!r} has actions for frames {sorted(steps)}")
        out[episode_id] = np.asarray([steps[t] for t in range(len(steps))], np.float64)
    return out


# ----------------------------------------------------------------------------- videos


class _DecodedVideos:
    """LRU of whole decoded video files (thread-safe): a pair reads two frames of one file, and
    shuffled batches come back to a file often, so decoding a file once beats seeking per frame."""

    def __init__(self, capacity: int):
        self.capacity = max(int(capacity), 1)
        self._frames: collections.OrderedDict[str, list[np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def frame(self, path: str, t: int) -> np.ndarray:
        with self._lock:
            frames = self._frames.get(path)
            if frames is not None:
                self._frames.move_to_end(path)
        if frames is None:
            frames = _decode_video(path)
            with self._lock:
                self._frames[path] = frames
                while len(self._frames) > self.capacity:
                    self._frames.popitem(last=False)
        if t >= len(frames):
            raise ValueError(f"video {path}: decoded {len(frames)} frames, asked for frame {t}")
        return frames[t]


def _decode_video(path: str) -> list[np.ndarray]:
    import av

    try:
        with av.open(path) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.FFmpegError as e:
        raise ValueError(f"cannot decode video {path}: {e}") from e


def _probe_video(path: str) -> tuple[int, float | None]:
    """(frame count, fps) from the container; counts packets when the header has no count."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"video {path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as e:
        raise ValueError(f"cannot open video {path}: {e}") from e
    return int(count), (float(rate) if rate else None)


def video_files(root_or_file: str | Path, cache_videos: int = 4) -> list[Episode]:
    """One episode per video file (``root_or_file`` is a file or a folder searched recursively).

    Frames are decoded with PyAV when first asked for; the ``cache_videos`` most recently used
    files stay decoded in memory (decoding a file once per pair would dominate otherwise).
    For shuffled training over many long videos, extract frames to folders instead.
    """
    root = Path(root_or_file)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            (p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES),
            key=lambda p: natural_key(str(p)),
        )
    else:
        raise FileNotFoundError(f"video file or folder {root} does not exist")
    if not files:
        raise ValueError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {root}")
    cache = _DecodedVideos(cache_videos)
    episodes = []
    for path in files:
        count, fps = _probe_video(str(path))
        episode_id = path.name if root.is_file() else path.relative_to(root).as_posix()
        episodes.append(
            Episode(episode_id, count, "", lambda t, p=str(path): cache.frame(p, t), None, None, fps)
        )
    return episodes


# ----------------------------------------------------------------------------- RLDS


def rlds_episodes(
    path: str | Path, image_key: str = "image", split: str = "train", fps: float | None = None
) -> list[Episode]:
    """Episodes of an RLDS dataset directory (Open X-Embodiment layout), via ``tfds.builder_from_directory``.

    Frames: ``steps/observation/<image_key>``, kept encoded (PNG/JPEG bytes, one episode's worth per
    Episode) and decoded on each ``load``. Instruction: ``steps/language_instruction`` or
    ``steps/observation/natural_language_instruction`` of the first step. Actions: ``steps/action``,
    one row per step (so [num_frames, A]); a dict of vectors is flattened and concatenated in
    sorted key order. Episode id: ``episode_metadata/episode_id`` when present, else ``<split>_<i>``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO/WARNING start-up lines
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its oneDNN notice (tf only reads records here)
    import tensorflow_datasets as tfds

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
    episodes = []
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


def _encoded_loader(encoded: Sequence[bytes], where: str) -> Callable[[int], np.ndarray]:
    def load(t: int) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(encoded[t])) as image:
                return np.asarray(image.convert("RGB"))
        except Exception as e:
            raise ValueError(f"cannot decode frame {t} of {where}: {e}") from e

    return load


# ----------------------------------------------------------------------------- JSONL


@dataclass
class _Row:
    line: int
    image: str
    t: int | None
    instruction: str
    action: list[float] | None


def jsonl_frames(
    path: str | Path, fps: float | None = None, check_files: bool = True, image_root: str | Path | None = None
) -> list[Episode]:
    """LAPA-style JSONL, one row per frame: ``image`` (path; relative paths are resolved against
    the JSONL's folder and may not leave ``image_root``, default that folder), optional ``episode_id``
    (default: the image's parent folder), ``t`` (default: order of appearance in its episode),
    ``instruction`` and ``raw_actions`` or ``action`` (floats; ``raw_actions`` wins, since
    LAPA's finetune rows put bin ids in ``action``).

    Rows are grouped by episode and ordered by t; frame k of an episode is its k-th smallest t.
    The instruction is the first non-empty one in that order. Actions must be given on every
    frame, on all but the last, or on none. ``check_files`` checks that every image exists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {path} does not exist")
    groups: dict[str, list[_Row]] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if raw.strip():
                episode_id, row = _parse_row(
                    raw, f"{path}:{line_no}", path.parent, line_no, check_files, image_root
                )
                groups.setdefault(episode_id, []).append(row)
    if not groups:
        raise ValueError(f"{path} has no rows")
    return [_jsonl_episode(path, episode_id, rows, fps) for episode_id, rows in groups.items()]


def _parse_row(
    raw: bytes, where: str, base: Path, line_no: int, check_files: bool, within: str | Path | None
) -> tuple[str, _Row]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    image = row.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: field 'image': expected a path string, got {image!r}")
    image_path = resolve_under(image, base, where, explicit_root=False, within=within)
    if check_files and not image_path.is_file():
        raise FileNotFoundError(f"{where}: field 'image': image {image_path} does not exist")
    episode_id = row.get("episode_id", str(image_path.parent))
    if not isinstance(episode_id, str | int) or isinstance(episode_id, bool):
        raise ValueError(f"{where}: field 'episode_id': expected a string or integer, got {episode_id!r}")
    t = row.get("t")
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
        raise ValueError(f"{where}: field 't': expected an integer >= 0, got {t!r}")
    instruction = row.get("instruction", "")
    if not isinstance(instruction, str):
        raise ValueError(f"{where}: field 'instruction': expected a string, got {instruction!r}")
    key = "raw_actions" if "raw_actions" in row else "action"
    action = row.get(key)
    if action is not None and (
        not isinstance(action, list)
        or not action
        or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in action)
    ):
        raise ValueError(f"{where}: field {key!r}: expected a non-empty list of numbers, got {action!r}")
    return str(episode_id), _Row(line_no, str(image_path), t, instruction, action)


def _jsonl_episode(path: Path, episode_id: str, rows: list[_Row], fps: float | None) -> Episode:
    for k, row in enumerate(rows):
        row.t = k if row.t is None else row.t
    rows.sort(key=lambda r: r.t)
    for a, b in itertools.pairwise(rows):
        if a.t == b.t:
            raise ValueError(f"{path}:{b.line}: episode {episode_id!r} already has t={b.t} (line {a.line})")
    has = [r.action is not None for r in rows]
    actions = None
    if any(has):
        given = rows if all(has) else rows[:-1]
        missing = next((r for r in given if r.action is None), None)
        if missing is not None:
            raise ValueError(
                f"{path}:{missing.line}: episode {episode_id!r} has actions on some frames but none on "
                f"frame t={missing.t} (actions go on every frame, or on all but the last)"
            )
        dims = len(given[0].action)
        bad = next((r for r in given if len(r.action) != dims), None)
        if bad is not None:
            raise ValueError(f"{path}:{bad.line}: action has {len(bad.action)} values, episode has {dims}")
        actions = np.asarray([r.action for r in given], np.float64)
    paths = [r.image for r in rows]
    instruction = next((r.instruction for r in rows if r.instruction), "")
    return Episode(episode_id, len(rows), instruction, _file_loader(paths), paths, actions, fps)


# ----------------------------------------------------------------------------- simulated


def tabletop_episodes(
    count: int = 16, image_size: int = 64, seed: int = 0, noise: float = 0.1, max_steps: int = 100
) -> list[Episode]:
    """Scripted-expert episodes of the tabletop world (the same ones ``data.make_tabletop`` writes
    for this seed), with the expert's actions and instructions; frames are held in memory."""
    from data.make_tabletop import episodes as simulate
    from sim.env import EnvConfig
    from sim.tasks import TASK_KINDS

    config = EnvConfig(image_size=image_size, max_steps=max_steps)
    out = []
    for episode in tqdm(simulate(config, count, seed, TASK_KINDS, noise), total=count, desc="tabletop"):
        frames = episode["frames"]
        out.append(
            Episode(
                episode["episode_id"],
                len(frames),
                episode["instruction"],
                _array_loader(frames),
                None,
                np.asarray(episode["actions"], np.float64) if episode["actions"] else None,
            )
        )
    return out


def open_episodes(kind: str, path: str = "", **options: Any) -> list[Episode]:
    """Episodes from a source of ``kind`` (folder, video, rlds, jsonl, tabletop); options go to its
    reader (tabletop: image_size, count, seed, noise; ``path`` is unused)."""
    readers: dict[str, Callable[..., list[Episode]]] = {
        "folder": image_folders,
        "video": video_files,
        "rlds": rlds_episodes,
        "jsonl": jsonl_frames,
    }
    if kind == "tabletop":
        return tabletop_episodes(**options)
    if kind not in readers:
        raise ValueError(f"unknown episode source {kind!r}; choose from {', '.join(SOURCE_KINDS)}")
    return readers[kind](path, **options)


# ----------------------------------------------------------------------------- pairs


def frame_pairs(
    episodes: Sequence[Episode], offset: int = 1, offset_seconds: float | None = None, tail: str = "drop"
) -> np.ndarray:
    """int64 [N, 3] rows (episode index, t, t2) with t2 = t + H.

    H is ``offset`` frames, or with ``offset_seconds`` ``max(1, round(offset_seconds * fps))`` per
    episode. ``tail="drop"`` keeps only t with t + H < num_frames; ``tail="clamp"`` keeps every t
    with t2 = min(t + H, num_frames - 1), as LAPA's labelling does (the last frame pairs with itself).
    """
    if tail not in ("drop", "clamp"):
        raise ValueError(f"tail must be 'drop' or 'clamp', got {tail!r}")
    if offset_seconds is None and offset < 1:
        raise ValueError(f"offset must be >= 1 frame, got {offset}")
    if offset_seconds is not None and offset_seconds <= 0:
        raise ValueError(f"offset_seconds must be > 0, got {offset_seconds}")
    parts = [np.zeros((0, 3), np.int64)]
    for i, episode in enumerate(episodes):
        h = offset if offset_seconds is None else _seconds_to_frames(episode, offset_seconds)
        n = episode.num_frames
        t = np.arange(n if tail == "clamp" else max(n - h, 0), dtype=np.int64)
        parts.append(np.stack([np.full_like(t, i), t, np.minimum(t + h, n - 1)], axis=1))
    return np.concatenate(parts)


def _seconds_to_frames(episode: Episode, seconds: float) -> int:
    if not episode.fps:
        raise ValueError(
            f"episode {episode.episode_id!r} has no fps: give the offset in frames, or the source's fps"
        )
    return max(1, round(seconds * episode.fps))


def select_pairs(pairs: np.ndarray, episode_indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """The pairs whose episode is one of ``episode_indices`` (e.g. one side of ``split_episodes``)."""
    return pairs[np.isin(pairs[:, 0], np.asarray(episode_indices))]


def small_frame(episode: Episode, t: int, size: int) -> np.ndarray:
    """Frame t as float32 [size, size, 3] in [0, 1] (PIL bilinear)."""
    return resize_frame(episode.frame(t), size)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [size, size, 3] in [0, 1], as LAPA's LAQ does it
    (``T.Resize((s, s))`` on a PIL image, then ``ToTensor``); resized only when the size differs."""
    if frame.shape[:2] != (size, size):
        frame = np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))
    return frame.astype(np.float32) / 255.0


def drop_static(
    episodes: Sequence[Episode], pairs: np.ndarray, threshold: float, size: int = 32
) -> tuple[np.ndarray, int]:
    """Removes pairs whose mean absolute pixel difference (frames at size x size, values in [0, 1])
    is below ``threshold``; returns the kept pairs (in their order) and how many were dropped."""
    diffs = np.zeros(len(pairs), np.float64)
    order = np.argsort(pairs[:, 0], kind="stable")  # one episode at a time: its small frames are reused
    cache: dict[int, np.ndarray] = {}
    current = -1
    for k in tqdm(order, desc="static pairs", unit="pair"):
        i, t, t2 = (int(v) for v in pairs[k])
        if i != current:
            cache, current = {}, i
        for s in (t, t2):
            if s not in cache:
                cache[s] = small_frame(episodes[i], s, size)
        diffs[k] = np.abs(cache[t] - cache[t2]).mean()
    keep = diffs >= threshold
    return pairs[keep], int((~keep).sum())


def pair_actions(episodes: Sequence[Episode], pairs: np.ndarray) -> np.ndarray | None:
    """Ground-truth action of each pair, float32 [N, A]: dims 0-5 (translation/rotation deltas)
    summed over actions[t:t2], dims 6+ (the gripper) taken at frame t2 - 1; zeros when t2 == t.
    None when any episode lacks actions."""
    if any(e.actions is None for e in episodes):
        return None
    dims = {e.actions.shape[1] for e in episodes}
    if len(dims) > 1:
        raise ValueError(f"episodes have actions of different sizes {sorted(dims)}")
    width = dims.pop() if dims else 0
    summed = min(width, DELTA_DIMS)
    out = np.zeros((len(pairs), width), np.float64)
    for i in np.unique(pairs[:, 0]):
        rows = np.flatnonzero(pairs[:, 0] == i)
        actions = episodes[int(i)].actions
        t, t2 = pairs[rows, 1], pairs[rows, 2]
        cumulative = np.concatenate([np.zeros((1, width)), np.cumsum(actions, axis=0)])
        out[rows, :summed] = (cumulative[t2] - cumulative[t])[:, :summed]
        moved = t2 > t
        out[rows[moved], summed:] = actions[t2[moved] - 1, summed:]
    return out.astype(np.float32)


def split_episodes(num_episodes: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) episode indices, sorted, from a seeded shuffle: split by episode so
    held-out pairs never share a video with training pairs. At least one held-out episode when
    ``holdout_fraction > 0`` and there are two or more episodes; at least one training episode."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    count = round(holdout_fraction * num_episodes)
    if holdout_fraction > 0 and num_episodes >= 2:
        count = min(max(count, 1), num_episodes - 1)
    order = np.random.default_rng(seed).permutation(num_episodes)
    return np.sort(order[count:]).astype(np.int64), np.sort(order[:count]).astype(np.int64)


# ----------------------------------------------------------------------------- batches


class PairBatches:
    """Turns pair rows into training batches.

    ``frames``: float32 [B, 2, S, S, 3] in [0, 1] (x_t, x_t2); ``actions``: float32 [B, A] from
    ``pair_actions``, present only when every episode has actions (so every batch has the same keys).
    """

    def __init__(self, episodes: Sequence[Episode]):
        self.episodes = list(episodes)
        self.has_actions = all(e.actions is not None for e in self.episodes)

    def make_batch(self, pairs_rows: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
        pairs_rows = np.asarray(pairs_rows, np.int64).reshape(-1, 3)
        frames = np.zeros((len(pairs_rows), 2, image_size, image_size, 3), np.float32)
        for b, (i, t, t2) in enumerate(pairs_rows):
            episode = self.episodes[int(i)]
            frames[b, 0] = small_frame(episode, int(t), image_size)
            frames[b, 1] = small_frame(episode, int(t2), image_size)
        batch = {"frames": frames}
        if self.has_actions:
            batch["actions"] = pair_actions(self.episodes, pairs_rows)
        return batch


def pair_stream(
    episodes: Sequence[Episode],
    pairs: np.ndarray,
    global_batch_size: int,
    image_size: int,
    seed: int,
    prefetch: int = 2,
) -> BatchStream:
    """This host's batches of a deterministic per-epoch shuffle of ``pairs`` (hosts read disjoint
    slices); resumable through ``state()`` / ``restore()``."""
    hosts = jax.process_count()
    if global_batch_size % hosts:
        raise ValueError(f"global batch {global_batch_size} does not split over {hosts} hosts")
    batches = PairBatches(episodes)
    pairs = np.asarray(pairs, np.int64)

    def make(rows: np.ndarray, epoch: int, index: int) -> dict[str, np.ndarray]:
        return batches.make_batch(pairs[rows], image_size)

    return BatchStream(len(pairs), global_batch_size // hosts, make, seed=seed, prefetch=prefetch)
