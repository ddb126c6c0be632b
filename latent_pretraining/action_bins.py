"""Action bins in LAPA's CSV format: one row of bin edges per action dimension.

The CSV header is ``0..N-1``; rows may be ragged (fewer edges in a dimension). Bin
``i`` of a dimension decodes to ``(edge[i] + edge[i + 1]) / 2``. An id outside a
dimension's bins is an error, never a substituted value.
"""

from __future__ import annotations

import csv
import os

import numpy as np


class ActionBins:
    def __init__(self, edges: list[np.ndarray]):
        self.edges = [np.asarray(e, np.float64) for e in edges]
        for d, e in enumerate(self.edges):
            if len(e) < 2 or np.any(np.diff(e) < 0):
                raise ValueError(f"dimension {d}: bin edges must be at least two non-decreasing values")
        self.centres = [(e[:-1] + e[1:]) / 2.0 for e in self.edges]

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> ActionBins:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            next(reader, None)  # header 0..N-1
            edges = []
            for number, row in enumerate(reader, start=2):
                try:
                    values = [float(v) for v in row if v.strip() != ""]
                except ValueError as e:
                    raise ValueError(f"{path}:{number}: {e}") from None
                edges.append(np.asarray([v for v in values if not np.isnan(v)]))
        if not edges:
            raise ValueError(f"{path}: no bin rows")
        return cls(edges)

    @property
    def num_bins(self) -> list[int]:
        return [len(c) for c in self.centres]

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
