"""Frame pairs for the latent action model: (t, t+H) pairs of episodes, and their batches.

The LAM sees frame ``x_t`` and ``x_{t+H}`` of a video and learns discrete codes for the change.
Episodes come from ``latent_pretraining.episodes`` (``open_episodes``: image folders, the tabletop
export, videos, RLDS, JSONL).

Pairs are int64 rows ``(episode index, t, t2)`` (``frame_pairs``); ``PairBatches.make_batch``
turns rows into ``{"frames": float32 [B, 2, S, S, 3] in [0, 1]}`` (LAPA's LAQ preprocessing: PIL
bilinear resize to S x S, then / 255) plus ``"actions"`` when every episode has ground-truth
actions, and ``pair_stream`` wraps that in the shared per-host resumable ``BatchStream``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from latent_pretraining.actions.spec import DELTA_DIMS
from latent_pretraining.core.batches import BatchStream
from latent_pretraining.episodes import Episode

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
