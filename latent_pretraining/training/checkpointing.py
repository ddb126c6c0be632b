"""Training checkpoints with orbax: periodic async saves, keep-N, atomic directories,
and resume of the newest one into the sharded state (with the data iterator's state)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves ``state`` (a pytree of sharded arrays) and ``data`` (a JSON dict) under
    ``<run_dir>/checkpoints/<step>``; orbax writes each step to a temporary directory
    and renames it when complete, so a killed run never leaves a half checkpoint."""

    def __init__(self, run_dir: str | Path, keep: int = 3, save_every: int = 1000, async_save: bool = True):
        self.directory = Path(run_dir).absolute() / "checkpoints"
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def maybe_save(self, step: int, state: Any, data: dict, force: bool = False) -> bool:
        """Saves at multiples of ``save_every`` (or when forced); returns whether it saved."""
        if not force and (self.save_every <= 0 or step % self.save_every):
            return False
        if step in self.manager.all_steps():
            return False
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        )
        return True

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """The newest (or given) checkpoint restored onto ``abstract_state``'s shardings, or None."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        log.info("restored checkpoint %s/%d", self.directory, step)
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
