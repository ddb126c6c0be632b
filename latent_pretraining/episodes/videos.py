"""Video files decoded with PyAV, one episode per file."""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import numpy as np

from latent_pretraining.episodes.base import Episode, natural_key

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


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
