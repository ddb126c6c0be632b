"""The latent action model's quantizers: NSVQ, VQ-EMA and FSQ behind one interface."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lam.model import get_lam_config
from lam.quantizers import FSQ, NSVQ, VQEMA, lapa_replace_step, nearest
from latent_pretraining.core.sharding import make_mesh


def _cfg(kind: str, **options):
    cfg = get_lam_config("tiny", kind)
    for k, v in options.items():
        cfg.quantizer_options[k] = v
    return cfg


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    z, book = rng.normal(size=(5, 3, 4)), rng.normal(size=(8, 4))
    expected = np.argmin(((z[:, :, None, :] - book[None, None]) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(np.asarray(nearest(jnp.asarray(z), jnp.asarray(book))), expected)


def test_nsvq_noise_has_the_quantization_error_norm():
    """||q - z|| equals ||z - c|| exactly (eps inside the division, not added to the ratio)."""
    q = NSVQ(_cfg("nsvq"), nnx.Rngs(0))
    z = jax.random.normal(jax.random.PRNGKey(1), (6, 4, q.dim))
    noisy, codes, _ = q.quantize(z, True, jax.random.PRNGKey(2))
    hard = q.lookup(codes)
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(noisy - z), axis=-1),
        np.linalg.norm(np.asarray(z - hard), axis=-1),
        rtol=1e-5,
    )
    assert not np.allclose(np.asarray(noisy), np.asarray(hard))  # training vectors are not the codes
    eval_vectors, eval_codes, _ = q.quantize(z, False)
    np.testing.assert_array_equal(np.asarray(eval_codes), np.asarray(codes))
    np.testing.assert_array_equal(np.asarray(eval_vectors), np.asarray(hard))  # inference: hard codes


def test_lapa_replacement_schedule():
    due = [1, 101, 201, 901, 1001, 1501, 4501]
    not_due = [0, 2, 100, 1000, 1101, 4999, 5001, 5501]
    assert all(bool(lapa_replace_step(jnp.int32(s))) for s in due)
    assert not any(bool(lapa_replace_step(jnp.int32(s))) for s in not_due)


def test_nsvq_replaces_dead_codes_only_when_due():
    q = NSVQ(
        _cfg("nsvq", schedule="periodic", replace_every=10, replace_noise=0.01, replace_from="codes"),
        nnx.Rngs(0),
    )
    before = np.asarray(q.codebook[...]).copy()
    codes = jnp.asarray([[0, 1, 0, 1]] * 8)  # only codes 0 and 1 in use
    z = jnp.zeros((8, 4, q.dim))
    out = q.maintain(z, codes, jnp.int32(5), jax.random.PRNGKey(0))
    assert int(out["restarts"]) == 0 and int(out["dead_codes"]) == 6
    np.testing.assert_array_equal(np.asarray(q.codebook[...]), before)
    out = q.maintain(z, codes, jnp.int32(10), jax.random.PRNGKey(0))
    after = np.asarray(q.codebook[...])
    assert int(out["restarts"]) == 6 and int(q.restarts_total[...]) == 6
    np.testing.assert_array_equal(after[:2], before[:2])  # used codes kept
    for row in after[2:]:  # each dead code is now a perturbed copy of a used one, distinct from it
        gaps = np.linalg.norm(before[:2] - row, axis=-1)
        rms = np.sqrt(np.mean(before[:2] ** 2))
        assert gaps.min() < 0.1 * rms * np.sqrt(q.dim) and gaps.min() > 0
    np.testing.assert_array_equal(np.asarray(q.counts[...]), 0)  # counts restart after a replacement


def test_nsvq_can_replace_dead_codes_with_batch_vectors():
    q = NSVQ(_cfg("nsvq", schedule="periodic", replace_every=1, replace_from="batch"), nnx.Rngs(0))
    before = np.asarray(q.codebook[...]).copy()
    z = jax.random.normal(jax.random.PRNGKey(4), (8, 4, q.dim)) * 1e-3  # far smaller than the codes
    q.maintain(z, jnp.zeros((8, 4), jnp.int32), jnp.int32(1), jax.random.PRNGKey(0))
    after, vectors = np.asarray(q.codebook[...]), np.asarray(z).reshape(-1, q.dim)
    np.testing.assert_array_equal(after[0], before[0])
    for row in after[1:]:  # every dead code is now one of the batch's vectors
        assert np.min(np.abs(vectors - row).max(axis=1)) < 1e-7


def test_nsvq_replacement_is_one_decision_over_the_global_batch(eight_devices):
    """Sharded over 8 devices, the upkeep equals the single-device upkeep and stays replicated."""
    cfg = _cfg("nsvq", schedule="periodic", replace_every=1)
    codes = jnp.asarray(np.random.default_rng(0).integers(0, 3, size=(16, 4)), jnp.int32)
    z = jax.random.normal(jax.random.PRNGKey(3), (16, 4, cfg.quant_dim))

    def upkeep(state, z, codes):
        q = nnx.merge(graphdef, state)
        q.maintain(z, codes, jnp.int32(1), jax.random.PRNGKey(7))
        return nnx.state(q)

    graphdef, state = nnx.split(NSVQ(cfg, nnx.Rngs(0)))
    single = jax.jit(upkeep)(state, z, codes)
    mesh = make_mesh("8,1,1,1")
    batch = NamedSharding(mesh, PartitionSpec(("dp", "fsdp")))
    with jax.set_mesh(mesh):
        sharded = jax.jit(upkeep)(state, jax.device_put(z, batch), jax.device_put(codes, batch))
    book = sharded["codebook"][...]
    np.testing.assert_allclose(np.asarray(book), np.asarray(single["codebook"][...]), atol=1e-6)
    shards = [np.asarray(s.data) for s in book.addressable_shards]
    assert all(np.array_equal(shards[0], s) for s in shards)


def test_vq_ema_moves_codes_to_cluster_means_and_restarts_dead_ones():
    q = VQEMA(_cfg("vq_ema", ema_decay=0.5, restart_every=1, dead_threshold=0.5), nnx.Rngs(0))
    book = np.asarray(q.codebook[...]).copy()
    z = jnp.asarray(np.tile(book[3] + 0.5, (8, 4, 1)))  # everything lands on one code (3)
    _, codes, aux = q.quantize(z, True)
    assert np.all(np.asarray(codes) == 3)
    expected_commit = 0.25 * np.mean((np.asarray(z) - book[3]) ** 2)
    assert float(aux) == pytest.approx(expected_commit, rel=1e-5)
    out = q.maintain(z, codes, jnp.int32(1), jax.random.PRNGKey(0))
    new = np.asarray(q.codebook[...])
    # code 3 moves towards the data; the seven unused codes are restarted on batch vectors
    assert np.linalg.norm(new[3] - (book[3] + 0.5)) < np.linalg.norm(book[3] - (book[3] + 0.5))
    assert int(out["restarts"]) == 7
    np.testing.assert_allclose(np.delete(new, 3, axis=0), np.tile(book[3] + 0.5, (7, 1)), atol=1e-5)


def test_fsq_codes_and_lookup_agree_and_cover_the_codebook():
    q = FSQ(_cfg("fsq"), nnx.Rngs(0))
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (512, 4, q.dim))
    vectors, codes, _ = q.quantize(z, False)
    np.testing.assert_allclose(np.asarray(q.lookup(codes)), np.asarray(vectors), atol=1e-5)
    assert set(np.asarray(codes).ravel().tolist()) == set(range(8))
    grads = jax.grad(lambda z: q.quantize(z, True)[0].sum())(z)
    assert np.all(np.isfinite(np.asarray(grads))) and np.abs(np.asarray(grads)).sum() > 0  # straight-through


def test_fsq_levels_must_match_the_codebook():
    with pytest.raises(ValueError, match="codebook_size"):
        FSQ(_cfg("fsq", levels=(3, 2)), nnx.Rngs(0))
