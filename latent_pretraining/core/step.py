"""The one train step every trainer compiles: loss, gradients, update, upkeep, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx

from latent_pretraining.core.state import TrainState

Metrics = dict[str, jax.Array]
# loss_fn(model, batch, rng) -> (loss, metrics, carry); carry (any pytree) goes to after_update
LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, Metrics, Any]]
# after_update(model, carry, step, rng) -> metrics; edits the updated model in place (codebook upkeep)
AfterUpdate = Callable[[nnx.Module, Any, jax.Array, jax.Array], Metrics]


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    after_update: AfterUpdate | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]:
    """``step(state, batch) -> (state, metrics)``; metrics hold the loss function's, the upkeep's,
    ``loss``, ``grad_norm``, ``param_norm`` and the ``learning_rate`` this step's update used
    (``schedule`` maps the steps done before it to that rate, as ``build_optimizer`` returns it).
    The upkeep runs after every update, so it cannot be combined with gradient accumulation."""
    if after_update is not None and isinstance(optimizer, optax.MultiSteps):
        raise ValueError(
            "optimizer.accumulate_steps > 1 with a trainer whose codebook upkeep runs after every "
            "update: set optimizer.accumulate_steps=1 and raise batch_size instead"
        )

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, Metrics]:
        rng, loss_key, upkeep_key = jax.random.split(state["rng"], 3)

        def objective(params):
            loss, metrics, carry = loss_fn(nnx.merge(graphdef, params, state["rest"]), batch, loss_key)
            return loss, (metrics, carry)

        (loss, (metrics, carry)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step_no = state["step"] + 1
        rest = state["rest"]
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        if after_update is not None:
            model = nnx.merge(graphdef, params, rest)
            metrics.update(after_update(model, carry, step_no, upkeep_key))
            _, params, rest = nnx.split(model, nnx.Param, ...)
        metrics.update(param_norm=optax.tree.norm(params), learning_rate=schedule(state["step"]))
        new_state = {"params": params, "rest": rest, "opt_state": opt_state, "step": step_no, "rng": rng}
        return new_state, metrics

    return step
