"""Shared by the LAM ceiling benchmarks: part of the ``small`` LAM trained with the tabletop world's
true actions (same data and optimizer as ``bench_lam_quality.py``), scored on held-out pairs."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from report import add_model_argument, override_model, tabletop_export

from lam import metrics
from lam.configs.lam import get_config
from lam.data import PairBatches, pair_actions
from lam.train import load_pairs
from latent_pretraining.core.optim import build_optimizer


def ceiling_parser(doc: str, steps: int, eval_every: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--eval_every", type=int, default=eval_every)
    p.add_argument("--episodes", type=int, default=150)
    p.add_argument("--noise", type=float, default=1.0, help="expert action noise")
    p.add_argument("--data_dir", default="runs/bench_data", help="where the tabletop export is written once")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval_pairs", type=int, default=512)
    add_model_argument(p)
    return p


@dataclasses.dataclass
class CeilingData:
    """The preset's config (overrides applied), training pairs, held-out batch and action statistics."""

    config: ml_collections.ConfigDict
    batches: PairBatches
    train_pairs: np.ndarray
    holdout: dict[str, np.ndarray]
    action_mean: np.ndarray
    action_std: np.ndarray

    def standardize(self, actions):
        return (actions - self.action_mean) / self.action_std


def load_ceiling_data(args: argparse.Namespace) -> CeilingData:
    config = get_config("small")
    override_model(config.model, args.model)
    config.total_steps, config.optimizer.learning_rate = args.steps, args.lr
    config.data.source = "tabletop"
    config.data.path = str(
        tabletop_export(args.data_dir, args.episodes, config.model.image_size, 0, args.noise)
    )
    episodes, train_pairs, holdout_pairs = load_pairs(config)
    batches = PairBatches(episodes)
    holdout = batches.make_batch(holdout_pairs[: args.eval_pairs], config.model.image_size)
    mean, std = metrics.standardiser(pair_actions(episodes, train_pairs))
    return CeilingData(config, batches, train_pairs, holdout, mean, std)


def train_and_evaluate(
    data: CeilingData,
    args: argparse.Namespace,
    model: nnx.Module,
    loss: Callable[[nnx.Module, jax.Array, jax.Array], jax.Array],
    evaluate: Callable[[], dict[str, float]],
) -> list[dict]:
    """Trains ``model`` on ``loss(model, frames, actions)`` over random training batches with the
    LAM's optimizer; every ``eval_every`` steps (and at the end) a row of ``evaluate()``'s scores
    with the step, recent train loss and minutes."""
    config, rng = data.config, np.random.default_rng(data.config.seed)
    optimizer = nnx.Optimizer(model, build_optimizer(config)[0], wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, frames, actions):
        value, grads = nnx.value_and_grad(loss)(model, frames, actions)
        optimizer.update(model, grads)
        return value

    rows, losses, began = [], [], time.perf_counter()
    for i in range(1, args.steps + 1):
        drawn = data.train_pairs[rng.integers(0, len(data.train_pairs), config.batch_size)]
        batch = data.batches.make_batch(drawn, config.model.image_size)
        losses.append(step(model, optimizer, batch["frames"], batch["actions"]))  # read back at evaluations
        if i % args.eval_every == 0 or i == args.steps:
            scores = evaluate()
            print(f"step {i}: " + ", ".join(f"{k} {v:+.2f}" for k, v in scores.items()), flush=True)
            row = {"step": i, "train_mse": round(float(np.mean(jax.device_get(losses[-100:]))), 6)}
            row.update({k: round(v, 3) for k, v in scores.items()})
            rows.append(row | {"minutes": round((time.perf_counter() - began) / 60, 1)})
    return rows
