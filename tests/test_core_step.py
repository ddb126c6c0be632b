"""The one optimizer builder and train step every trainer uses, and the shared run-config fields."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lam.configs.lam import get_config as lam_config
from latent_pretraining.configs.action_decoder import get_config as decoder_config
from latent_pretraining.configs.lapa import get_config as vla_config
from latent_pretraining.configs.vqgan import get_config as vqgan_config
from latent_pretraining.core.optim import build_optimizer, optimizer_config
from latent_pretraining.core.run_config import run_config
from latent_pretraining.core.step import make_train_step
from latent_pretraining.core.trees import flatten


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.w = nnx.Param(jnp.full((2, 2), 2.0))
        self.b = nnx.Param(jnp.ones((2,)))
        self.count = nnx.Variable(jnp.zeros((), jnp.int32))


def _state(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def _config(**optimizer):
    return run_config(run_dir="unused", batch_size=1, total_steps=10, optimizer=optimizer)


def test_step_reports_loss_norms_and_learning_rate_and_runs_upkeep():
    config = _config(learning_rate=0.1, warmup_steps=0, schedule="constant", clip_gradient=0.0)
    optimizer, schedule = build_optimizer(config)
    graphdef, params, rest = _state(Tiny(nnx.Rngs(0)))

    def loss_fn(model, batch, rng):
        loss = jnp.sum(model.w[...] * batch["x"]) + jnp.sum(model.b[...])
        return loss, {"half": loss / 2}, batch["x"].sum()

    def upkeep(model, carry, step, rng):
        model.count[...] = model.count[...] + step
        return {"carried": carry}

    step = make_train_step(graphdef, loss_fn, optimizer, schedule, upkeep)
    state = {
        "params": params,
        "rest": rest,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    state["rng"] = jax.random.PRNGKey(0)
    state, metrics = jax.jit(step)(state, {"x": jnp.ones((2, 2))})
    assert float(metrics["loss"]) == 2.0 * 4 + 2.0 and float(metrics["half"]) == 5.0
    assert float(metrics["grad_norm"]) == pytest.approx(np.sqrt(6.0))  # d/dw = 1 (4 entries), d/db = 1 (2)
    assert float(metrics["learning_rate"]) == pytest.approx(0.1)
    assert float(metrics["carried"]) == 4.0
    assert int(state["rest"]["count"][...]) == 1 and int(state["step"]) == 1
    # Adam's first step moves every weight by the learning rate against its gradient's sign
    np.testing.assert_allclose(np.asarray(state["params"]["w"][...]), 1.9, rtol=1e-5)
    expected_norm = np.sqrt(4 * 1.9**2 + 2 * 0.9**2)
    assert float(metrics["param_norm"]) == pytest.approx(expected_norm, rel=1e-5)
    assert not np.array_equal(np.asarray(state["rng"]), np.asarray(jax.random.PRNGKey(0)))


def _linear_loss(model, batch, rng):
    return jnp.sum(model.w[...]) + jnp.sum(model.b[...]), {}, None


def test_reported_learning_rate_is_the_one_the_update_used():
    """Under warmup each step reports the rate its update applied (Adam on a constant gradient
    moves every weight by exactly that rate)."""
    optimizer, schedule = build_optimizer(_config(learning_rate=0.4, warmup_steps=4, clip_gradient=0.0))
    graphdef, params, rest = _state(Tiny(nnx.Rngs(0)))
    state = {"params": params, "rest": rest, "opt_state": optimizer.init(params)}
    state.update(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(graphdef, _linear_loss, optimizer, schedule))
    for expected in (0.0, 0.1, 0.2, 0.3):
        before = float(state["params"]["w"][0, 0])
        state, metrics = step(state, {})
        moved = before - float(state["params"]["w"][0, 0])
        assert float(metrics["learning_rate"]) == pytest.approx(expected) == pytest.approx(moved, abs=1e-6)


def test_upkeep_is_refused_with_gradient_accumulation():
    optimizer, schedule = build_optimizer(_config(accumulate_steps=2))
    graphdef, _, _ = _state(Tiny(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="accumulate_steps"):
        make_train_step(graphdef, _linear_loss, optimizer, schedule, lambda *args: {})


def test_weight_decay_on_matrices_only_or_on_all():
    _, params, _ = _state(Tiny(nnx.Rngs(0)))
    zero = jax.tree.map(jnp.zeros_like, params)
    for decay, vector_moves in (("matrices", False), ("all", True)):
        tx, _ = build_optimizer(_config(weight_decay=0.5, warmup_steps=0, schedule="constant", decay=decay))
        updates, _ = tx.update(zero, tx.init(params), params)
        assert np.abs(np.asarray(updates["w"][...])).max() > 0
        assert (np.abs(np.asarray(updates["b"][...])).max() > 0) == vector_moves


def test_learning_rate_is_reported_per_update_under_accumulation():
    tx, schedule = build_optimizer(_config(learning_rate=1.0, warmup_steps=4, accumulate_steps=2))
    assert isinstance(tx, optax.MultiSteps)
    assert [float(schedule(s)) for s in (0, 1, 2, 3, 4)] == [0.0, 0.0, 0.25, 0.25, 0.5]


def test_optimizer_block_refuses_unknown_fields_and_choices():
    with pytest.raises(KeyError, match="grad_clip"):
        optimizer_config(grad_clip=1.0)
    with pytest.raises(ValueError, match=r"optimizer\.decay"):
        build_optimizer(_config(decay="vectors"))


@pytest.mark.parametrize(
    "config",
    [vla_config("debug_latent"), lam_config("tiny"), vqgan_config("tiny"), decoder_config()],
    ids=["vla", "lam", "vqgan", "action_decoder"],
)
def test_every_trainer_shares_the_run_fields(config):
    shared = run_config(run_dir="x", batch_size=1, total_steps=1)
    assert set(shared.keys()) <= set(config.keys())
    assert set(config.optimizer.keys()) == set(shared.optimizer.keys())


@pytest.mark.parametrize(
    "presets",
    [
        [vla_config(p) for p in ("debug_latent", "debug_finetune", "latent_pretrain", "finetune")],
        [lam_config(p) for p in ("tiny", "small", "lapa")],
        [vqgan_config(p) for p in ("tiny", "small", "lwm")],
    ],
    ids=["vla", "lam", "vqgan"],
)
def test_presets_of_a_trainer_have_the_same_fields(presets):
    """The trainer tests check that a run reads every field of the tiny preset; the same fields
    then cover the large presets, which CI cannot run."""
    fields = [set(flatten(p.to_dict())) for p in presets]
    assert all(f == fields[0] for f in fields)
