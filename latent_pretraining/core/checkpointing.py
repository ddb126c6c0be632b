"""Training checkpoints with orbax: periodic async saves, keep-N, atomic directories,
and resume of the newest one into the sharded state (with the data iterator's state).

Safety: a failed write raises :class:`CheckpointError` naming its step (orbax surfaces a
background write's error only when the next save starts); a damaged newest step is moved aside to
``<step>.damaged-<n>`` (kept, never deleted) and the previous step restored, so reruns
neither fail on it nor collide with it when they save that step again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)
DRAIN_SECONDS = 30.0  # how long a failed restore waits for orbax's reads still in flight


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or none of a run's checkpoints restores."""


def saved_steps(run_dir: str | Path) -> list[int]:
    """The steps saved under ``<run_dir>/checkpoints``, read off the directory names (orbax's
    finished steps; temporary and moved-aside ones are not steps), without opening orbax."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def short_cause(error: BaseException) -> str:
    """``Type: first line`` of an exception, without tensorstore's JSON spec, at most 300 chars."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(" [tensorstore_spec", 1)[0] if lines else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# what a damaged step raises: missing or cut files, unreadable metadata, tensorstore data errors
_DAMAGE_MARKERS = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "No such file", "Unexpected end")


def _is_damage(error: BaseException) -> bool:
    """Whether a restore failed because of the step's files (not a passing I/O error or memory)."""
    if isinstance(error, FileNotFoundError | EOFError | KeyError):
        return True
    if isinstance(error, OSError | MemoryError):
        return False
    return isinstance(error, ValueError) or any(marker in str(error) for marker in _DAMAGE_MARKERS)


def _everywhere(ok: bool) -> bool:
    """``ok`` on every process (an all-gather on multi-host runs; each host reads its own shards)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


class _DrainingEventLoop(asyncio.SelectorEventLoop):
    """Finishes its pending tasks before closing. Orbax runs each restore in a fresh loop and
    closes it when the first array read fails; reads still in flight then report to the
    closed loop from tensorstore's threads, printing 'Event loop is closed' (or 'sys.meta_path
    is None' at exit) tracebacks long after the real error, and failed reads whose callbacks
    never ran print 'Task exception was never retrieved'."""

    def close(self) -> None:
        if not self.is_running():
            deadline = time.monotonic() + DRAIN_SECONDS
            while pending := [task for task in asyncio.all_tasks(self) if not task.done()]:
                left = deadline - time.monotonic()
                if left <= 0:  # never hang a restore on a read that does not finish
                    for task in pending:
                        task.cancel()
                    self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                    break
                self.run_until_complete(asyncio.wait(pending, timeout=left))
            self.run_until_complete(asyncio.sleep(0))  # the callbacks the last step scheduled
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingEventLoop()


@contextlib.contextmanager
def _draining_event_loops() -> Iterator[None]:
    """New event loops (orbax's restore makes its own) finish their tasks before closing."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


class Checkpointer:
    """Saves ``state`` (a pytree of sharded arrays) and ``data`` (a JSON dict) under
    ``<run_dir>/checkpoints/<step>``; orbax writes each step to a temporary directory
    and renames it when complete, so a killed run never leaves a half checkpoint.

    ``read_only=True`` (another run's checkpoints, e.g. ``init``) creates, moves and saves
    nothing, and refuses a run directory without checkpoints with FileNotFoundError."""

    def __init__(
        self,
        run_dir: str | Path,
        keep: int = 3,
        save_every: int = 1000,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = Path(run_dir).absolute() / "checkpoints"
        self.save_every = save_every
        self.read_only = read_only
        self._writing: int | None = None  # the step of the save that may still be in flight
        if read_only:
            if not self.directory.is_dir():
                raise FileNotFoundError(f"{self.directory} does not exist: no checkpoints to read there")
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0, max_to_keep=None
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=async_save, create=True
            )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def maybe_save(self, step: int, state: Any, data: dict, force: bool = False) -> bool:
        """Saves at multiples of ``save_every`` (or when forced); returns whether it saved.

        Raises CheckpointError when this write, or the previous one still in flight, fails."""
        if not force and (self.save_every <= 0 or step % self.save_every):
            return False
        if step in self.manager.all_steps():
            return False
        self.wait()
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
            )
        except Exception as error:
            raise CheckpointError(
                f"writing checkpoint {self.directory}/{step} failed ({short_cause(error)})"
            ) from error
        self._writing = step
        return True

    def check(self) -> None:
        """Raises CheckpointError if the last (background) write has failed; cheap, for every step."""
        if self._writing is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def restore(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The newest checkpoint that restores onto ``abstract_state``'s shardings, or None if
        there is none. Each newer step that fails is reported in one line (and, unless read-only,
        moved to ``<step>.damaged-<n>``); CheckpointError names every step's cause if none restores."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        newest = self._restore_newest(args)
        if newest is None:
            return None
        restored, _ = newest
        return restored["state"], dict(restored["data"])

    def restore_params(self, abstract_params: Any) -> tuple[Any, int] | None:
        """Only the ``params`` of the newest checkpoint that restores (onto ``abstract_params``'s
        shardings) and its step, or None if there is none: nothing else of the state is read, so
        the saving run's optimizer need not match. Damaged steps are handled as in :meth:`restore`."""
        item = {"params": abstract_params}
        partial = ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
        )
        newest = self._restore_newest(ocp.args.Composite(state=partial))
        if newest is None:
            return None
        restored, step = newest
        return restored["state"]["params"], step

    def _restore_newest(self, args: ocp.args.Composite) -> tuple[Any, int] | None:
        """``args`` restored from the newest step that takes them, and that step (see :meth:`restore`)."""
        causes: dict[int, str] = {}
        for step in sorted(self.manager.all_steps(), reverse=True):
            cause = None
            try:
                with _draining_event_loops():
                    restored = self.manager.restore(step, args=args)
            except Exception as error:
                if not _is_damage(error):  # e.g. an I/O error or out of memory: not the step's fault
                    raise CheckpointError(
                        f"restoring checkpoint {self.directory}/{step} failed ({short_cause(error)}); "
                        "it was left in place: rerun to try again"
                    ) from error
                cause = short_cause(error)
            if not _everywhere(cause is None):  # every host must restore the same step
                causes[step] = cause or "damaged on another host"
                continue
            self._set_aside(causes, step)
            log.info("restored checkpoint %s/%d", self.directory, step)
            return restored, step
        if causes:
            each = "; ".join(f"step {s} ({cause})" for s, cause in causes.items())
            raise CheckpointError(
                f"no checkpoint under {self.directory} restores onto this run's state: {each}. "
                "They are damaged, or were written for another state (a different model or optimizer: "
                "another config or version of the trainer); move them away to start the run again."
            )
        return None

    def _set_aside(self, causes: dict[int, str], restored: int) -> None:
        """Reports each damaged step newer than ``restored`` in one line; unless read-only, moves
        it to ``<step>.damaged-<n>`` (process 0; the others wait) so saving that step again works."""
        if not causes:
            return
        if self.read_only:
            for step, cause in causes.items():
                print(
                    f"checkpoint {self.directory}/{step} is damaged ({cause}); using step {restored}",
                    flush=True,
                )
            return
        aside = {step: self._aside_name(step) for step in causes}
        self._sync("checkpointer_named_damaged")
        if jax.process_index() == 0:
            for step, path in aside.items():
                (self.directory / str(step)).rename(path)
        self._sync("checkpointer_moved_damaged")
        self.manager.reload()
        for step, cause in causes.items():
            print(
                f"checkpoint {self.directory}/{step} is damaged ({cause}); "
                f"moved it to {aside[step]} and resuming from step {restored}",
                flush=True,
            )

    def _aside_name(self, step: int) -> Path:
        """``<step>.damaged-<n>``, ``n`` one above the earlier damaged copies of that step."""
        pattern = re.compile(rf"{step}\.damaged-(\d+)")
        taken = [int(m.group(1)) for p in self.directory.iterdir() if (m := pattern.fullmatch(p.name))]
        return self.directory / f"{step}.damaged-{max(taken, default=-1) + 1}"

    @staticmethod
    def _sync(name: str) -> None:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(name)

    def wait(self) -> None:
        """Waits for the write in flight; raises CheckpointError naming its step if it failed."""
        step, self._writing = self._writing, None
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise CheckpointError(
                f"writing checkpoint {self.directory}/{step} failed ({short_cause(error)})"
            ) from error

    def close(self) -> None:
        self.wait()
        self.manager.close()
