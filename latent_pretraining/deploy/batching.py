"""Dynamic batching: requests that arrive within ``wait_s`` of the first (up to the largest batch size)
are answered by one greedy ``Policy.act`` call on the one worker thread that runs the model, padded
to a compiled batch size by repeating the last real row."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from latent_pretraining.policy.policy import Act

logger = logging.getLogger(__name__)

ActFn = Callable[[Sequence[np.ndarray], Sequence[str]], Act]


@dataclasses.dataclass(frozen=True)
class Answer:
    """One request's row of a batch's ``Act``: ``timing`` holds the batch's seconds per stage and
    ``queue``, the seconds the request waited for its batch; ``batch``: requests in the batch."""

    actions: np.ndarray | None
    latent: np.ndarray | None
    action_tokens: np.ndarray | None
    timing: dict[str, float]
    batch: int


@dataclasses.dataclass(frozen=True)
class _Job:
    image: np.ndarray
    instruction: str
    future: concurrent.futures.Future[Answer]
    submitted: float


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes the model runs (and is compiled) at: the powers of two below ``max_batch``, and it."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return (*(1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch), max_batch)


def _row(values: np.ndarray | None, row: int) -> np.ndarray | None:
    return None if values is None else values[row]


class Batcher:
    """Runs ``act`` for batches of submitted requests on one worker thread. ``start`` warms it up
    first (one call per batch size); requests submitted before ``ready`` wait for it."""

    def __init__(self, act: ActFn, max_batch: int = 8, wait_s: float = 0.005):
        if wait_s < 0:
            raise ValueError(f"the batch wait must be >= 0 s, got {wait_s}")
        self.act = act
        self.sizes = batch_sizes(max_batch)
        self.wait_s = wait_s
        self.ready = threading.Event()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(
        self, image: np.ndarray, instruction: str, on_ready: Callable[[Exception | None], None]
    ) -> None:
        """Starts the worker: it runs ``(image, instruction)`` at every batch size, calls ``on_ready(None)``
        and serves; when the warm-up fails it calls ``on_ready(error)`` and stops."""

        def run() -> None:
            try:
                for size in self.sizes:
                    self.act([image] * size, [instruction] * size)
            except Exception as e:
                logger.exception("warm-up failed")
                on_ready(e)
                return
            self.ready.set()
            on_ready(None)
            while (jobs := self._collect()) is not None:
                self._serve(jobs)

        self._thread = threading.Thread(target=run, name="policy-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, instruction: str) -> concurrent.futures.Future[Answer]:
        """The future answer to one request (its exception: the policy's error for this request)."""
        future: concurrent.futures.Future[Answer] = concurrent.futures.Future()
        self._queue.put(_Job(image, instruction, future, time.perf_counter()))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stops the worker once the requests already submitted are answered."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _collect(self) -> list[_Job] | None:
        """The next batch: the first waiting request and those that arrive within ``wait_s`` of
        taking it, up to the largest batch size; None once closed."""
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.perf_counter() + self.wait_s
        while len(jobs) < self.sizes[-1]:
            try:
                job = self._queue.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # close after this batch
                break
            jobs.append(job)
        return jobs

    def _serve(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # drop cancelled ones
        try:
            if jobs:
                self._act(jobs)
        except Exception as e:  # never leave a request waiting, never stop the worker
            logger.exception("answering a batch failed")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)

    def _act(self, jobs: list[_Job]) -> None:
        """One ``act`` call for the jobs, padded to a batch size; if it fails for a batch, each job is
        run alone, so that a request the policy refuses fails only itself."""
        size = next(s for s in self.sizes if s >= len(jobs))
        padding = [jobs[-1]] * (size - len(jobs))
        start = time.perf_counter()
        try:
            out = self.act([j.image for j in jobs + padding], [j.instruction for j in jobs + padding])
        except Exception as e:
            if len(jobs) == 1:
                jobs[0].future.set_exception(e)
                return
            logger.warning("a batch of %d failed (%s); running its requests one at a time", len(jobs), e)
            for job in jobs:
                self._act([job])
            return
        for row, job in enumerate(jobs):
            timing = {**out.timing, "queue": start - job.submitted}
            rows = (_row(out.actions, row), _row(out.latent, row), _row(out.action_tokens, row))
            job.future.set_result(Answer(*rows, timing, len(jobs)))
