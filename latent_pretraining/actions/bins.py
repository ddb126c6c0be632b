"""The project's action tokenizer: continuous 7-D end-effector actions <-> bin ids.

Bins live in LAPA's CSV format: a header ``0..M-1`` and one row of bin edges per action
dimension (rows may be ragged). Bin ``i`` covers ``[edge[i], edge[i+1])`` (the last bin
is closed) and decodes to ``(edge[i] + edge[i+1]) / 2``; values outside the edges are
clipped into the end bins (and counted). An id outside a dimension's bins is an error,
never a substituted value. The gripper is thresholded, not truncated with ``int()``.

Fitting (``ActionBins.fit``): ``quantile`` bins (LAPA's) or ``uniform`` bins between the
1st and 99th percentile (OpenVLA's). Repeated values would collapse quantile edges (LAPA's
``qcut(duplicates='drop')`` then silently left a dimension with fewer bins); here the
widest bins are split in half until every dimension has the requested number of distinct
bins, so a value repeated many times owns one bin and the rest of the range keeps its
resolution. A constant dimension gets the requested bins over a tiny interval around
its value.
"""

from __future__ import annotations

import csv
import os

import numpy as np

GRIPPER_CONVENTIONS = {"01": (0.0, 1.0), "pm1": (-1.0, 1.0)}  # open, closed values


class ActionBins:
    def __init__(self, edges: list[np.ndarray]):
        self.edges = [np.asarray(e, np.float64) for e in edges]
        for d, e in enumerate(self.edges):
            if len(e) < 2 or np.any(np.diff(e) <= 0):
                raise ValueError(f"dimension {d}: bin edges must be at least two increasing values")
        self.centres = [(e[:-1] + e[1:]) / 2.0 for e in self.edges]

    # -- construction -------------------------------------------------------
    @classmethod
    def fit(
        cls,
        actions: np.ndarray,
        num_bins: int = 256,
        scheme: str = "quantile",
        gripper_convention: str = "01",
    ) -> ActionBins:
        """Bins for every dimension of ``actions`` [N, D]; the last dimension is the gripper
        (two bins: open and closed in the given convention)."""
        actions = np.asarray(actions, np.float64)
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        edges = [_fit_dimension(actions[:, d], num_bins, scheme) for d in range(actions.shape[1] - 1)]
        open_, closed = GRIPPER_CONVENTIONS[gripper_convention]
        half = (closed - open_) / 2.0
        edges.append(np.array([open_ - half, open_ + half, closed + half]))  # LAPA's [-0.5, 0.5, 1.5]
        return cls(edges)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> ActionBins:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            next(reader, None)  # header 0..M-1
            edges = []
            for number, row in enumerate(reader, start=2):
                try:
                    values = [float(v) for v in row if v.strip() not in ("", "nan", "NaN")]
                except ValueError as e:
                    raise ValueError(f"{path}:{number}: {e}") from None
                edges.append(np.asarray(values))
        if not edges:
            raise ValueError(f"{path}: no bin rows")
        return cls(edges)

    def to_csv(self, path: str | os.PathLike) -> None:
        """LAPA's layout (pandas ``DataFrame(edges).to_csv(index=False)``): ragged rows padded empty."""
        width = max(len(e) for e in self.edges)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(range(width))
            for e in self.edges:
                writer.writerow([repr(float(v)) for v in e] + [""] * (width - len(e)))

    # -- use --------------------------------------------------------------------
    @property
    def num_bins(self) -> list[int]:
        return [len(c) for c in self.centres]

    def encode(
        self, actions: np.ndarray, gripper_threshold: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions [..., D] -> (int ids [..., D], bool [..., D] where a value was clipped into an end bin).

        The gripper (last dimension) is closed when ``>= gripper_threshold`` (default: the
        middle between its two bins)."""
        actions = np.asarray(actions, np.float64)
        ids = np.empty(actions.shape, np.int64)
        clipped = np.zeros(actions.shape, bool)
        last = len(self.edges) - 1
        for d, e in enumerate(self.edges):
            x = actions[..., d]
            if d == last:
                threshold = e[1] if gripper_threshold is None else gripper_threshold
                ids[..., d] = (x >= threshold).astype(np.int64)
                continue
            clipped[..., d] = (x < e[0]) | (x > e[-1])
            ids[..., d] = np.clip(np.searchsorted(e, x, side="right") - 1, 0, len(e) - 2)
        return ids, clipped

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Ids [..., D] -> continuous actions [..., D]."""
        ids = np.asarray(ids)
        if ids.shape[-1] != len(self.centres):
            raise ValueError(f"expected {len(self.centres)} action ids per step, got {ids.shape[-1]}")
        out = np.empty(ids.shape, np.float64)
        for d, centres in enumerate(self.centres):
            column = ids[..., d]
            bad = (column < 0) | (column >= len(centres))
            if bad.any():
                raise ValueError(
                    f"dimension {d}: id {int(column[bad].flat[0])} is not a bin (0..{len(centres) - 1})"
                )
            out[..., d] = centres[column]
        return out

    def valid_ids(self, vocab_size: int) -> np.ndarray:
        """bool [D, vocab_size]: the ids each dimension can decode (for constrained decoding)."""
        allowed = np.zeros((len(self.centres), vocab_size), bool)
        for d, n in enumerate(self.num_bins):
            if n > vocab_size:
                raise ValueError(f"dimension {d} has {n} bins but the action vocabulary has {vocab_size} ids")
            allowed[d, :n] = True
        return allowed


def _fit_dimension(x: np.ndarray, num_bins: int, scheme: str) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):  # constant dimension
        width = max(1e-6, 1e-6 * abs(lo))
        return np.linspace(lo - width, lo + width, num_bins + 1)
    if scheme == "uniform":
        q01, q99 = np.quantile(x, [0.01, 0.99])
        if q99 <= q01:
            q01, q99 = lo, hi
        return np.linspace(q01, q99, num_bins + 1)
    if scheme != "quantile":
        raise ValueError(f"binning scheme {scheme!r} is not 'quantile' or 'uniform'")
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, num_bins + 1)))
    while len(edges) < num_bins + 1:  # repeated values collapsed some edges: split the widest bins
        need = num_bins + 1 - len(edges)
        widths = np.diff(edges)
        widest = np.argsort(widths)[::-1][:need]
        edges = np.unique(np.concatenate([edges, (edges[widest] + edges[widest + 1]) / 2.0]))
    return edges
