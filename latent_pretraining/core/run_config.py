"""The fields every trainer's run config shares, defined once: run, checkpoint, logging, optimizer.

``loop.prepare_run``/``checkpointer_for``/``logger_for`` and ``optim.build_optimizer`` read them;
each preset starts from ``run_config(...)`` and adds its ``model`` and ``data`` blocks.
"""

from __future__ import annotations

import ml_collections

from latent_pretraining.core.optim import optimizer_config


def run_config(
    *,
    run_dir: str,
    batch_size: int,
    total_steps: int,
    mesh: str = "-1,1,1,1",
    log_every: int = 50,
    eval_every: int = 1000,
    save_every: int = 1000,
    optimizer: dict | None = None,
) -> ml_collections.ConfigDict:
    """A config holding the shared fields; ``optimizer`` overrides the optimizer block's defaults."""
    c = ml_collections.ConfigDict()
    c.run_dir = run_dir
    c.mesh = mesh  # dp,fsdp,tp,sp; one entry may be -1; LAPA's "!-1,8,1,1" works too
    c.seed = 0
    c.batch_size = batch_size  # global rows per step
    c.total_steps = total_steps
    c.optimizer = optimizer_config(**(optimizer or {}))
    c.log_every = log_every
    c.eval_every = eval_every  # 0: only at the end
    c.wandb_project = ""  # set: metrics also go to Weights & Biases
    c.save_every = save_every
    c.keep_checkpoints = 2
    c.async_checkpoints = True
    return c
