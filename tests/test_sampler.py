"""KV-cache generation against full forward passes, batching, buckets, constraints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import debug_config, debug_model, mixed_batch

from latent_pretraining.actions.bins import ActionBins
from latent_pretraining.core.sharding import create_sharded, make_mesh
from latent_pretraining.model import Modality, VLAModel
from latent_pretraining.sampler import Sampler, bucket_length, left_pad, median_ids


def _prompt(seed: int, text: int = 6):
    """[BOS text vision text] prompts as the sampler sees them before a latent/action span."""
    ids, modality = mixed_batch(1, seed=seed, text=text)
    end = int(np.flatnonzero(modality[0] == Modality.LATENT)[0])
    return ids[0, :end], modality[0, :end]


def _argmax(logits, step):
    return int(np.argmax(logits))


def _greedy_full_forward(model, ids, modality, vocab, n, choose=_argmax):
    """Reference: no cache, one full forward pass per new token, chosen by ``choose(logits, step)``.
    The buffer is right-padded to a fixed length (causal attention: later slots cannot matter)."""
    length = len(ids)
    buf_ids = np.zeros((1, length + n), np.int32)
    buf_mod = np.zeros((1, length + n), np.int32)
    buf_ids[0, :length], buf_mod[0, :length] = ids, modality
    forward = jax.jit(lambda m, i, mo: m(i, mo, heads=(vocab,))[vocab])
    out = []
    for step in range(n):
        logits = forward(model, jnp.asarray(buf_ids), jnp.asarray(buf_mod))
        token = choose(np.asarray(logits[0, length + step - 1], np.float64), step)
        out.append(token)
        buf_ids[0, length + step] = token
        buf_mod[0, length + step] = int(Modality[vocab.upper()])
    return out


@pytest.mark.parametrize("vocab,n", [("latent", 4), ("action", 7)])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_kv_cache_generation_equals_full_forward_greedy(vocab, n, scan_layers):
    model = debug_model(seed=5, scan_layers=scan_layers)
    sampler = Sampler(model)
    for seed in range(3):
        ids, modality = _prompt(seed, text=3 + 4 * seed)
        expected = _greedy_full_forward(model, ids, modality, vocab, n)
        tokens = sampler.generate(ids[None], modality[None], vocab=vocab, num_tokens=n)
        assert tokens.shape == (1, n)
        assert tokens[0].tolist() == expected


def test_median_ids_take_the_allowed_id_where_the_probability_passes_one_half():
    allowed = ActionBins([np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.array([-0.5, 0.5, 1.5])]).valid_ids(6)
    p = np.array(
        [
            [[0.45, 0.02, 0.08, 0.45, 0.0, 0.0], [0.3, 0.7, 0.0, 0.0, 0.0, 0.0]],
            [[0.1, 0.1, 0.1, 0.7, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0, 0.0, 0.0]],
        ]
    )
    logits = np.log(np.maximum(p, 1e-30)) + 3.0  # softmax is shift-invariant
    logits[..., 4:] = 50.0  # ids past a dimension's bins are not candidates
    np.testing.assert_array_equal(median_ids(jnp.asarray(logits), jnp.asarray(allowed)), [[2, 1], [3, 0]])


def test_median_decoding_takes_the_bin_where_the_probability_passes_one_half():
    model = debug_model(seed=5)
    ids, modality = _prompt(1)
    allowed = np.zeros((7, 256), bool)
    for step in range(7):
        allowed[step, 10 * step : 10 * step + 40] = True

    def median(logits, step):  # numpy: softmax over the allowed ids, first cumulative value >= 0.5
        valid = np.flatnonzero(allowed[step])
        p = np.exp(logits[valid] - logits[valid].max())
        return int(valid[np.argmax(np.cumsum(p / p.sum()) >= 0.5)])

    sampler = Sampler(model)
    tokens = sampler.generate(
        ids[None], modality[None], vocab="action", num_tokens=7, allowed_tokens=allowed, median=True
    )[0]
    assert tokens.tolist() == _greedy_full_forward(model, ids, modality, "action", 7, median)
    greedy = sampler.generate(ids[None], modality[None], vocab="action", num_tokens=7, allowed_tokens=allowed)
    assert tokens.tolist() != greedy[0].tolist()  # the two rules differ on this model


def test_batched_left_padded_generation_equals_one_by_one():
    model = debug_model(seed=6)
    sampler = Sampler(model)
    prompts = [_prompt(seed, text=2 + 5 * seed) for seed in range(4)]
    assert len({len(p[0]) for p in prompts}) == 4
    batched = sampler.generate_batch(prompts, vocab="action", num_tokens=7)
    for row, (ids, modality) in enumerate(prompts):
        single = sampler.generate(ids[None], modality[None], vocab="action", num_tokens=7)
        np.testing.assert_array_equal(batched[row], single[0])


def test_eos_id_inside_a_latent_span_does_not_stop_generation():
    """LAPA stopped at EOS id 2, which is also latent code 2, turning [2,x,y,z] into [2,0,0,0]."""
    model = debug_model(seed=7)
    ids, modality = _prompt(0)
    sampler = Sampler(model)
    allowed = np.ones((4, 8), bool)
    allowed[0] = False
    allowed[0, 2] = True  # the first latent code is 2 == EOS
    tokens = sampler.generate(
        ids[None], modality[None], vocab="latent", num_tokens=4, allowed_tokens=allowed
    )[0]
    expected = [2, *_greedy_full_forward(model, [*ids, 2], [*modality, int(Modality.LATENT)], "latent", 3)]
    assert tokens.tolist() == expected
    only_eos = np.zeros((4, 8), bool)
    only_eos[:, 2] = True
    all_twos = sampler.generate(
        ids[None], modality[None], vocab="latent", num_tokens=4, allowed_tokens=only_eos
    )
    assert all_twos.tolist() == [[2, 2, 2, 2]]


def test_prompt_lengths_share_a_bucket_and_a_compiled_program():
    assert bucket_length(20) == 32 and bucket_length(32) == 32 and bucket_length(33) == 64
    assert bucket_length(5000) == 5120
    assert bucket_length(303) == 320 and bucket_length(700) == 704  # a LAPA prompt pads to 320
    model = debug_model(seed=8)
    sampler = Sampler(model)
    for text in (3, 6, 9):  # lengths 19, 22, 25 -> bucket 32
        ids, modality = _prompt(0, text=text)
        sampler.generate(ids[None], modality[None], vocab="latent", num_tokens=4)
    assert sampler.compiled_variants() == 1
    ids, modality = _prompt(0, text=30)  # 46 -> bucket 64
    sampler.generate(ids[None], modality[None], vocab="latent", num_tokens=4)
    assert sampler.compiled_variants() == 2


def test_allowed_tokens_constrain_every_step():
    model = debug_model(seed=9)
    ids, modality = _prompt(1)
    free = Sampler(model).generate(ids[None], modality[None], vocab="action", num_tokens=7)[0]
    allowed = np.zeros((7, 256), bool)
    for step in range(7):  # each step may use a different id range (per-dimension bins)
        lo = 30 * step
        allowed[step, lo : lo + 20] = True
    allowed[0, free[0]] = False  # forbid the unconstrained choice
    tokens = Sampler(model).generate(
        ids[None], modality[None], vocab="action", num_tokens=7, allowed_tokens=allowed
    )[0]
    for step, token in enumerate(tokens):
        assert allowed[step, token], (step, token)
    sampled = Sampler(model).generate(
        ids[None],
        modality[None],
        vocab="action",
        num_tokens=7,
        allowed_tokens=allowed,
        temperature=1.0,
        rng=jax.random.PRNGKey(3),
    )[0]
    for step, token in enumerate(sampled):
        assert allowed[step, token], (step, token)


def test_top_k_one_sampling_is_greedy_and_temperature_sampling_varies():
    model = debug_model(seed=10)
    ids, modality = _prompt(2)
    sampler = Sampler(model)
    greedy = sampler.generate(ids[None], modality[None], vocab="action", num_tokens=7)
    topk1 = sampler.generate(
        ids[None],
        modality[None],
        vocab="action",
        num_tokens=7,
        temperature=1.0,
        top_k=1,
        rng=jax.random.PRNGKey(1),
    )
    np.testing.assert_array_equal(topk1, greedy)
    draws = {
        tuple(
            sampler.generate(
                ids[None],
                modality[None],
                vocab="action",
                num_tokens=7,
                temperature=5.0,
                rng=jax.random.PRNGKey(k),
            )[0]
        )
        for k in range(4)
    }
    assert len(draws) > 1


def test_sharded_sampler_matches_single_device(eight_devices):
    prompts = [_prompt(seed, text=2 + seed) for seed in range(8)]
    cfg = debug_config()
    single = create_sharded(
        lambda rngs: VLAModel(cfg, rngs=rngs), make_mesh("1,1,1,1", eight_devices[:1]), 11
    )
    expected = Sampler(single).generate_batch(prompts, vocab="action", num_tokens=7)
    mesh = make_mesh("2,2,2,1")
    sharded = create_sharded(lambda rngs: VLAModel(cfg, rngs=rngs), mesh, seed=11)
    assert len(sharded.layers.w_gate[...].sharding.device_set) == 8
    tokens = Sampler(sharded, mesh=mesh).generate_batch(prompts, vocab="action", num_tokens=7)
    np.testing.assert_array_equal(tokens, expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"vocab": "text", "num_tokens": 4}, "vocab must be one of"),
        ({"vocab": "latent", "num_tokens": 0}, "num_tokens must be >= 1"),
        ({"vocab": "latent", "num_tokens": 4, "temperature": -1.0}, "temperature"),
        (
            {"vocab": "latent", "num_tokens": 4, "allowed_tokens": np.ones((3, 8), bool)},
            r"allowed_tokens must be \[4, 8\]",
        ),
        ({"vocab": "latent", "num_tokens": 2, "allowed_tokens": np.zeros((2, 8), bool)}, "allows no token"),
        ({"vocab": "latent", "num_tokens": 4, "median": True}, "median decoding is for action ids"),
        ({"vocab": "action", "num_tokens": 7, "median": True, "temperature": 1.0}, "at temperature 0"),
    ],
)
def test_generate_argument_errors(kwargs, message):
    ids, modality = _prompt(0)
    with pytest.raises(ValueError, match=message):
        Sampler(debug_model()).generate(ids[None], modality[None], **kwargs)


def test_left_pad_layout_and_errors():
    ids, modality, mask = left_pad([(np.array([5, 6]), np.array([0, 1])), (np.array([7]), np.array([3]))])
    np.testing.assert_array_equal(ids, [[5, 6], [0, 7]])
    np.testing.assert_array_equal(modality, [[0, 1], [0, 3]])
    np.testing.assert_array_equal(mask, [[1, 1], [0, 1]])
    with pytest.raises(ValueError, match="prompt 0"):
        left_pad([(np.array([5, 6]), np.array([0]))])
    with pytest.raises(ValueError, match="shorter than the longest"):
        left_pad([(np.array([5, 6]), np.array([0, 0]))], length=1)


def test_inputs_that_would_give_made_up_tokens_are_errors():
    sampler = Sampler(debug_model())
    ids, modality = _prompt(0)
    ids, modality = ids[None].copy(), modality[None].copy()
    vision_at = int(np.flatnonzero(modality[0] == Modality.VISION)[0])
    bad = ids.copy()
    bad[0, vision_at] = 96  # the debug vision vocabulary is 96
    with pytest.raises(ValueError, match=f"row 0, position {vision_at}: vision id 96 is outside"):
        sampler.generate(bad, modality, vocab="action", num_tokens=7)
    right_padded = np.ones_like(ids)
    right_padded[0, -2:] = 0
    with pytest.raises(ValueError, match="padding must be on the left"):
        sampler.generate(ids, modality, right_padded, vocab="action", num_tokens=7)
    with pytest.raises(ValueError, match="exceeds max_sequence_length 1024"):
        sampler.generate(ids, modality, vocab="action", num_tokens=1024)
    with pytest.raises(ValueError, match="needs an explicit rng"):
        sampler.generate(ids, modality, vocab="action", num_tokens=7, temperature=0.7)
    assert sampler.compiled_variants() == 0  # nothing reached the device
