"""Mesh parsing, the logical-axis rule table, and sharded == single-device numerics."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import debug_config, mixed_batch
from jax.sharding import NamedSharding, PartitionSpec

from latent_pretraining.core.sharding import (
    cluster_described,
    create_sharded,
    logical_to_spec,
    make_mesh,
    parse_mesh_dims,
)
from latent_pretraining.model import VOCABS, VLAModel


@pytest.mark.parametrize(
    "spec,expected,split",
    [
        ("1,2,2,2", (1, 2, 2, 2), False),
        ("2,4,1,1", (2, 4, 1, 1), False),
        ("1,-1,1,1", (1, 8, 1, 1), False),
        ("!-1,4,1,1", (2, 4, 1, 1), True),
        ("!-1,8,1,1", (1, 8, 1, 1), True),
        ("dp:2,tp:4", (2, 1, 4, 1), False),
        ("-1", (8, 1, 1, 1), False),
    ],
)
def test_parse_mesh_dims(spec, expected, split):
    assert parse_mesh_dims(spec, 8) == (expected, split)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("-1,-1,1,1", "at most one axis may be -1"),
        ("3,1,1,1", "needs 3 devices"),
        ("-1,3,1,1", "not divisible by 3"),
        ("1,1,1,1,1", "at most 4 axes"),
        ("a,b", "expected integers"),
        ("xx:2", "unknown axis"),
        ("0,-1,1,1", "positive"),
    ],
)
def test_parse_mesh_dims_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_mesh_dims(spec, 8)


def test_make_mesh_axes_and_types(eight_devices):
    mesh = make_mesh("1,2,2,2")
    assert mesh.axis_names == ("dp", "fsdp", "tp", "sp")
    assert dict(mesh.shape) == {"dp": 1, "fsdp": 2, "tp": 2, "sp": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_rule_table_first_fitting_rule_wins(eight_devices):
    mesh = make_mesh("1,2,2,2")
    # embed -> ('fsdp', 'sp') when divisible by 4
    assert logical_to_spec(("embed", "q_heads"), (64, 64), mesh) == PartitionSpec(("fsdp", "sp"), "tp")
    # 6 is not divisible by 4: falls through to the next rule (fsdp alone)
    assert logical_to_spec(("embed", "mlp"), (6, 64), mesh) == PartitionSpec("fsdp", "tp")
    # an odd vocabulary (LAPA's 245 action bins) is replicated, not an error
    assert logical_to_spec(("vocab", "embed"), (245, 64), mesh) == PartitionSpec(None, ("fsdp", "sp"))
    # a mesh axis is used once per array
    assert logical_to_spec(("mlp", "vocab"), (8, 8), mesh) == PartitionSpec("tp", None)
    # size-1 mesh axes are dropped
    assert logical_to_spec(
        ("activation_batch", "activation_length"), (8, 32), make_mesh("1,8,1,1")
    ) == PartitionSpec("fsdp", None)


def test_cluster_detection(monkeypatch):
    for var in (
        "JAX_COORDINATOR_ADDRESS",
        "SLURM_JOB_ID",
        "SLURM_NTASKS",
        "TPU_WORKER_HOSTNAMES",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(var, raising=False)
    assert not cluster_described()
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not cluster_described()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert cluster_described()
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-a,host-b")
    assert cluster_described()


def _loss(model: VLAModel, ids, modality, segments):
    out = model(ids, modality, None, segments)
    valid = (segments > 0).astype(jnp.float32)
    total = 0.0
    for name in VOCABS:
        logp = jax.nn.log_softmax(out[name], axis=-1)
        target = jnp.clip(ids, 0, out[name].shape[-1] - 1)
        picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
        total = total - jnp.sum(picked * valid) / jnp.sum(valid)
    return total


_SINGLE_DEVICE_RESULTS: dict = {}


def _run(mesh, cfg, ids, modality, segments):
    model = create_sharded(lambda rngs: VLAModel(cfg, rngs=rngs), mesh, seed=3)
    graphdef, state = nnx.split(model)

    def loss_and_logits(state, ids, modality, segments):
        m = nnx.merge(graphdef, state)
        loss, grads = jax.value_and_grad(lambda s: _loss(nnx.merge(graphdef, s), ids, modality, segments))(
            state
        )
        return loss, grads, m(ids, modality, None, segments)

    batch_sharding = NamedSharding(mesh, logical_to_spec(("activation_batch", None), ids.shape, mesh))
    args = [jax.device_put(a, batch_sharding) for a in (ids, modality, segments)]
    with jax.set_mesh(mesh):
        loss, grads, logits = jax.jit(loss_and_logits)(state, *args)
    return model, jax.device_get((loss, grads, logits))


@pytest.mark.parametrize("spec", ["1,2,2,2", "2,4,1,1", "1,1,2,4"])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_sharded_forward_and_gradients_match_single_device(eight_devices, spec, scan_layers):
    cfg = debug_config(scan_layers=scan_layers, remat_policy="save-dots")
    ids, modality = mixed_batch(8, seed=1, text=9, cfg=cfg)  # length 32
    segments = np.ones_like(ids)
    segments[1, :5] = 0  # left padding
    segments[2, 16:] = 2  # two packed examples
    if scan_layers not in _SINGLE_DEVICE_RESULTS:  # the reference is the same for every mesh
        single_mesh = make_mesh("1,1,1,1", devices=eight_devices[:1])
        _SINGLE_DEVICE_RESULTS[scan_layers] = _run(single_mesh, cfg, ids, modality, segments)[1]
    loss1, grads1, logits1 = _SINGLE_DEVICE_RESULTS[scan_layers]
    sharded_model, (loss8, grads8, logits8) = _run(make_mesh(spec), cfg, ids, modality, segments)

    # parameters really are distributed the way the rule table says
    wq = sharded_model.layers.wq if scan_layers else sharded_model.layers[0].wq
    expected_tp = "tp" if dict(make_mesh(spec).shape)["tp"] > 1 else None
    assert wq[...].sharding.spec[-1] == expected_tp
    assert len(wq[...].sharding.device_set) == 8

    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    chex.assert_trees_all_close(logits8, logits1, rtol=1e-4, atol=1e-5)
    assert logits1.keys() == set(VOCABS)
    for path, g1 in nnx.to_flat_state(grads1):
        assert np.abs(g1.get_value()).max() > 0, path  # so that equal gradients mean something
    chex.assert_trees_all_close(grads8, grads1, rtol=1e-4, atol=1e-6)
