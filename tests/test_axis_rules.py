"""The run config's ``logical_axis_rules``: a custom table shards differently with the same
numerics, malformed entries are refused, and a replicated odd dimension is logged once."""

from __future__ import annotations

import json
import logging

import chex
import jax
import pytest
from flax import nnx
from helpers import debug_config, mixed_batch
from jax.sharding import NamedSharding, PartitionSpec

from latent_pretraining.configs import lapa
from latent_pretraining.core import sharding
from latent_pretraining.core.sharding import (
    DEFAULT_RULES,
    axis_rules,
    create_sharded,
    logical_to_spec,
    make_mesh,
    state_shardings,
    uses_config_axis_rules,
    validate_rules,
)
from latent_pretraining.model import VLAModel

# the default table with embeddings over tp and heads/MLP over sp (instead of fsdp+sp / tp)
CUSTOM_RULES = (
    ("activation_batch", ("dp", "fsdp")),
    ("activation_heads", "sp"),
    ("activation_kv_heads", "sp"),
    ("activation_mlp", "sp"),
    ("embed", "tp"),
    ("q_heads", "sp"),
    ("kv_heads", "sp"),
    ("mlp", ("sp", "fsdp")),
    ("vocab", None),
)


def _forward(mesh, cfg, ids, modality, rules):
    """The model built and run on ``mesh`` under ``rules``; returns it and its logits."""
    with axis_rules(rules):
        model = create_sharded(lambda rngs: VLAModel(cfg, rngs=rngs), mesh, seed=3)
        spec = logical_to_spec(("activation_batch", None), ids.shape, mesh)
        args = [jax.device_put(a, NamedSharding(mesh, spec)) for a in (ids, modality)]
        graphdef, state = nnx.split(model)
        with jax.set_mesh(mesh):
            logits = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))(state, *args)
    return model, jax.device_get(logits)


def test_custom_rules_change_parameter_specs_not_numerics(eight_devices):
    cfg = debug_config(scan_layers=False)
    ids, modality = mixed_batch(8, seed=1, text=9, cfg=cfg)
    _, single = _forward(make_mesh("1,1,1,1", devices=eight_devices[:1]), cfg, ids, modality, None)
    model, sharded = _forward(make_mesh("1,2,2,2"), cfg, ids, modality, CUSTOM_RULES)

    block = model.layers[0]
    assert block.wq[...].sharding.spec == PartitionSpec("tp", "sp")  # default: (('fsdp', 'sp'), 'tp')
    assert block.w_up[...].sharding.spec == PartitionSpec("tp", ("sp", "fsdp"))
    assert model.text_embed[...].sharding.spec == PartitionSpec(None, "tp")
    chex.assert_trees_all_close(sharded, single, rtol=1e-4, atol=1e-5)


def test_config_rules_reach_the_shardings_inside_train(eight_devices):
    mesh = make_mesh("1,2,2,2")
    config = lapa.get_config("debug_latent")
    abstract = nnx.state(nnx.eval_shape(lambda: VLAModel(debug_config(), rngs=nnx.Rngs(0))))

    @uses_config_axis_rules
    def train(config):
        return state_shardings(abstract, mesh)["text_head"].get_value().spec

    assert train(config) == PartitionSpec(("fsdp", "sp"), "tp")
    config.logical_axis_rules = CUSTOM_RULES
    assert train(config) == PartitionSpec("tp", None)
    # outside the run the built-in table is back
    assert logical_to_spec(("embed", "vocab"), (64, 1024), mesh) == PartitionSpec(("fsdp", "sp"), "tp")


def test_default_rules_survive_the_config_json_round_trip():
    saved = json.loads(lapa.get_config("debug_latent").to_json())["logical_axis_rules"]
    assert isinstance(saved[1], list)  # JSON writes pairs as lists
    assert validate_rules(saved) == DEFAULT_RULES


@pytest.mark.parametrize(
    "entry,message",
    [
        (("embed", "model"), "unknown mesh axis 'model'"),
        (("embed", ("fsdp", "tensor")), "unknown mesh axis 'tensor'"),
        (("embed",), "expected a \\(logical name, mesh axes\\) pair"),
        ("embed", "expected a \\(logical name, mesh axes\\) pair"),
        ((3, "tp"), "logical name must be a non-empty string"),
        (("mlp", ("tp", "tp")), "distinct and not empty"),
        (("mlp", []), "distinct and not empty"),
        (("mlp", 4), "must be None, a name or a list of names"),
    ],
)
def test_malformed_rule_is_a_value_error_naming_it(eight_devices, entry, message):
    rules = (("activation_batch", ("dp", "fsdp")), entry)
    with pytest.raises(ValueError, match=message) as err, axis_rules(rules):
        pass
    assert repr(entry) in str(err.value)
    with pytest.raises(ValueError, match=message):
        logical_to_spec(("embed",), (64,), make_mesh("1,2,2,2"), rules=rules)


def test_undivided_dimension_is_logged_once_and_replicated(eight_devices, monkeypatch, caplog):
    monkeypatch.setattr(sharding, "_WARNED", set())
    mesh = make_mesh("1,2,2,2")
    caplog.set_level(logging.WARNING, logger=sharding.__name__)
    for _ in range(3):
        assert logical_to_spec(("vocab", "embed"), (245, 64), mesh) == PartitionSpec(None, ("fsdp", "sp"))
    # a fallback rule that fits (embed 6 -> fsdp) replicates nothing, so it is not logged
    assert logical_to_spec(("embed", "mlp"), (6, 64), mesh) == PartitionSpec("fsdp", "tp")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert "'vocab' of size 245" in messages[0] and "tp (2)" in messages[0]
    logical_to_spec(("vocab",), (7,), mesh)  # another size: its own warning
    assert len(caplog.records) == 2
    assert sorted(key[1] for key in sharding._WARNED) == [7, 245]
