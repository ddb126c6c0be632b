"""The one optimizer every trainer builds, from the ``optimizer`` block of its run config."""

from __future__ import annotations

import re

import jax
import ml_collections
import optax
from flax import nnx

from latent_pretraining.core.schedules import warmup_schedule

DECAY_CHOICES = ("matrices", "all")


def optimizer_config(**defaults: object) -> ml_collections.ConfigDict:
    """The ``config.optimizer`` block with the shared defaults, overridden by this trainer's ``defaults``."""
    o = ml_collections.ConfigDict()
    o.learning_rate = 1e-3
    o.end_learning_rate = 0.0
    o.schedule = "cosine"  # cosine | constant (after a linear warmup from 0)
    o.warmup_steps = 100
    o.b1, o.b2 = 0.9, 0.95
    o.weight_decay = 0.0
    o.decay = "matrices"  # matrices: none on norms, biases and vectors (stacked too); all: every one
    o.clip_gradient = 1.0  # global-norm clipping; 0 disables
    o.accumulate_steps = 1  # gradient accumulation: an update every N micro-batches
    o.frozen = ""  # comma-separated regexes over parameter paths, e.g. "layers/.*,text_.*"
    unknown = sorted(set(defaults) - set(o.keys()))
    if unknown:
        raise KeyError(f"unknown optimizer fields {unknown}; the block has {sorted(o.keys())}")
    o.update(defaults)
    return o


def _path_name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def _frozen_labels(patterns: list[re.Pattern]):
    """Labels each parameter ``frozen`` when its path fully matches a pattern, else ``train``."""

    def labels(params):
        flat = nnx.to_flat_state(params)
        names = {
            path: ("frozen" if any(p.fullmatch(_path_name(path)) for p in patterns) else "train")
            for path, _ in flat
        }
        return nnx.from_flat_state([(path, var.replace(names[path])) for path, var in flat])

    return labels


def _decayed(path: tuple, param: jax.Array) -> bool:
    """Weight decay goes to weight matrices only: not to norms and biases, even when scanned
    layers stack them into [layers, dim] arrays."""
    name = jax.tree_util.keystr(path).lower()
    return param.ndim >= 2 and "norm" not in name and "bias" not in name


def build_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW after global-norm clipping, with warmup then cosine/constant over ``config.total_steps``,
    optional frozen parameter groups and gradient accumulation. Returns it and the learning rate
    as a function of the number of train steps done before (optax's count: with accumulation,
    of the update that step belongs to)."""
    o = config.optimizer
    if o.decay not in DECAY_CHOICES:
        raise ValueError(f"optimizer.decay is {o.decay!r}; choose {' or '.join(DECAY_CHOICES)}")
    if o.accumulate_steps < 1:
        raise ValueError(f"optimizer.accumulate_steps must be >= 1, got {o.accumulate_steps}")
    updates = max(config.total_steps // o.accumulate_steps, 1)
    schedule = warmup_schedule(o.schedule, o.learning_rate, o.warmup_steps, updates, o.end_learning_rate)
    decay_mask = None
    if o.decay == "matrices":
        decay_mask = lambda params: jax.tree_util.tree_map_with_path(_decayed, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(o.clip_gradient) if o.clip_gradient > 0 else optax.identity(),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask),
    )
    patterns = [re.compile(p.strip()) for p in o.frozen.split(",") if p.strip()]
    if patterns:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, _frozen_labels(patterns))
    if o.accumulate_steps == 1:
        return tx, schedule
    tx = optax.MultiSteps(tx, every_k_schedule=o.accumulate_steps)
    return tx, lambda step: schedule(step // o.accumulate_steps)
