"""Per-host, deterministic, resumable batch streams with background prefetch."""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np


def host_rows(
    num_rows: int, seed: int, epoch: int, process_index: int | None = None, process_count: int | None = None
) -> np.ndarray:
    """This host's rows of the epoch's shuffle: every host shuffles identically and
    takes a disjoint slice, so no two hosts ever read the same row."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return order[process_index::process_count]


class BatchStream:
    """Batches ``make_batch(rows, epoch, index)`` over this host's shuffled rows.

    The position (epoch, batch index) is the iterator state saved with checkpoints;
    ``restore`` continues with exactly the next batch. Batches are prepared ``prefetch``
    ahead on background threads so the device does not wait on Python.
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        make_batch: Callable[[np.ndarray, int, int], dict],
        seed: int = 0,
        prefetch: int = 2,
        workers: int = 2,
    ):
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.make_batch = make_batch
        self.batches_per_epoch = len(host_rows(num_rows, seed, 0)) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_rows} rows make no batch of {batch_size} per host ({jax.process_count()} hosts)"
            )
        self.prefetch = max(prefetch, 0)
        self._pool = ThreadPoolExecutor(max_workers=max(workers, 1)) if self.prefetch else None
        self._pending: collections.deque[tuple[tuple[int, int], Future]] = collections.deque()
        self.epoch, self.index = 0, 0

    def _positions(self, ahead: int) -> list[tuple[int, int]]:
        out, epoch, index = [], self.epoch, self.index
        for _ in range(ahead):
            out.append((epoch, index))
            index += 1
            if index == self.batches_per_epoch:
                epoch, index = epoch + 1, 0
        return out

    def _build(self, epoch: int, index: int) -> dict:
        rows = host_rows(self.num_rows, self.seed, epoch)[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        return self.make_batch(rows, epoch, index)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict:
        if self._pool is None:
            batch = self._build(self.epoch, self.index)
        else:
            wanted = self._positions(self.prefetch + 1)
            queued = {pos for pos, _ in self._pending}
            for pos in wanted:
                if pos not in queued:
                    self._pending.append((pos, self._pool.submit(self._build, *pos)))
            pos, future = self._pending.popleft()
            if pos != (self.epoch, self.index):
                raise RuntimeError(f"prefetched batch {pos} is not the next one {(self.epoch, self.index)}")
            batch = future.result()
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    def peek(self) -> dict:
        """The next batch, without advancing (e.g. to compile the step ahead of time)."""
        return self._build(self.epoch, self.index)

    def state(self) -> dict[str, Any]:
        """Position of the next batch (JSON-able)."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "num_rows": self.num_rows}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("num_rows", self.num_rows) != self.num_rows or state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"the checkpoint's data ({state}) is not this run's data "
                f"(num_rows={self.num_rows}, seed={self.seed})"
            )
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
