"""The VLA trainer's optimiser and initialisation options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from helpers import debug_config

from latent_pretraining import train as vla_train
from latent_pretraining.configs.lapa import get_config
from latent_pretraining.core.checkpointing import Checkpointer
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import create_train_state
from latent_pretraining.model import VLAModel


def _params():
    return nnx.state(VLAModel(debug_config(), rngs=nnx.Rngs(0)), nnx.Param)


def _ones_like(params):
    return jax.tree.map(jnp.ones_like, params)


def _apply(config, steps=1):
    tx, schedule = build_optimizer(config)
    params = _params()
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(_ones_like(params), state, params)
        params = optax.apply_updates(params, updates)
    return params, schedule


def test_frozen_groups_do_not_move():
    config = get_config("debug_latent")
    config.optimizer.frozen = "layers/.*,text_embed"
    config.optimizer.warmup_steps = 0
    before, (after, _) = _params(), _apply(config)
    for path, var in nnx.to_flat_state(after):
        name = "/".join(map(str, path))
        moved = not np.array_equal(
            np.asarray(var.get_value()), np.asarray(dict(nnx.to_flat_state(before))[path].get_value())
        )
        assert moved == (not (name.startswith("layers/") or name == "text_embed")), name


def test_weight_decay_spares_norms():
    config = get_config("debug_latent")
    config.optimizer.weight_decay, config.optimizer.warmup_steps, config.optimizer.clip_gradient = 0.5, 0, 0.0
    config.optimizer.schedule = "constant"
    tx, _ = build_optimizer(config)
    params = _params()
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)  # zero gradients: only decay moves weights
    flat = dict(nnx.to_flat_state(updates))
    for norm in [("final_norm",), ("layers", "attn_norm"), ("layers", "mlp_norm")]:  # stacked [L, D] too
        assert np.abs(np.asarray(flat[norm].get_value())).max() == 0, norm
    assert np.abs(np.asarray(flat[("layers", "wq")].get_value())).max() > 0


def test_gradient_accumulation_updates_every_k_steps():
    config = get_config("debug_latent")
    config.optimizer.accumulate_steps, config.optimizer.warmup_steps = 3, 0
    config.optimizer.schedule = "constant"
    before = np.asarray(_params()["final_norm"][...])
    after2, _ = _apply(config, steps=2)
    after3, _ = _apply(config, steps=3)
    assert np.array_equal(np.asarray(after2["final_norm"][...]), before)
    assert not np.array_equal(np.asarray(after3["final_norm"][...]), before)


def test_schedules():
    config = get_config("debug_latent")
    config.optimizer.learning_rate, config.optimizer.warmup_steps, config.total_steps = 1.0, 10, 110
    _, cosine = build_optimizer(config)
    assert float(cosine(5)) == 0.5 and float(cosine(10)) == 1.0 and float(cosine(110)) < 1e-6
    config.optimizer.schedule = "constant"
    _, constant = build_optimizer(config)
    assert float(constant(100)) == 1.0


def test_init_from_another_run_directory(tmp_path, eight_devices):
    mesh = make_mesh("1,1,1,1", devices=eight_devices[:1])
    config = get_config("debug_latent")
    factory = lambda rngs: VLAModel(config.model, rngs=rngs)  # noqa: E731
    _, donor, _ = create_train_state(factory, optax.adam(1e-3), mesh, seed=5)
    checkpointer = Checkpointer(tmp_path / "donor", save_every=1)
    checkpointer.maybe_save(7, donor, {"epoch": 0, "index": 0})
    checkpointer.close()
    _, fresh, _ = create_train_state(factory, optax.adam(1e-3), mesh, seed=0)
    config.init = str(tmp_path / "donor")
    started = vla_train._initialise(fresh, config, mesh)
    np.testing.assert_array_equal(
        np.asarray(started["params"]["layers"]["wq"][...]), np.asarray(donor["params"]["layers"]["wq"][...])
    )
