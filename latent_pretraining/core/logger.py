"""Metrics to JSON lines, TensorBoard event files and (optionally) Weights & Biases."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)


class MetricsLogger:
    """Writes ``<run_dir>/metrics.jsonl`` and TensorBoard events under ``<run_dir>/tensorboard``
    from process 0; ``wandb_project`` also logs to W&B when the package is installed."""

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = jax.process_index() == 0
        self._tb = None
        self._wandb = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._tb = EventFileWriter(str(self.run_dir / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                log.warning(
                    "wandb_project=%r but wandb is not installed; logging locally only", wandb_project
                )
            else:
                self._wandb = wandb.init(project=wandb_project, config=config, dir=str(self.run_dir))

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        scalars = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            values = [Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
            self._tb.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
