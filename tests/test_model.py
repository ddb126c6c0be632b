"""The multimodal LLaMA: modality routing, layer scan, remat, packing, dtypes, config checks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import debug_config, debug_model, mixed_batch

from latent_pretraining import attention
from latent_pretraining.attention import CAUSAL_BLOCK, dot_product_attention, rope
from latent_pretraining.config import get_model_config, validate
from latent_pretraining.lapa_checkpoint import load_lapa_params, save_lapa_params
from latent_pretraining.model import VOCABS, Modality, VLAModel


def _logits(model, ids, modality, positions=None, segments=None):
    out = model(jnp.asarray(ids), jnp.asarray(modality), positions, segments)
    return {k: np.asarray(v) for k, v in out.items()}


def test_same_id_is_embedded_by_its_modality_table():
    model = debug_model()
    ids = jnp.full((1, 4), 5, jnp.int32)
    modality = jnp.asarray([[Modality.TEXT, Modality.VISION, Modality.LATENT, Modality.ACTION]])
    rows = np.asarray(model.embed(ids, modality))[0]
    for i, name in enumerate(VOCABS):
        np.testing.assert_array_equal(rows[i], np.asarray(getattr(model, f"{name}_embed")[...])[5])


def test_vision_grid_adds_each_codes_row_and_column_and_nothing_elsewhere():
    """Two 2x2 frames in one span (8192 between, 8193 after), then an action token: the codes get
    the sin-cos of their (row, column) in their own frame; markers, text and actions get nothing."""
    plain = debug_model(vision_vocab_size=8448)  # room for the frame markers
    gridded = debug_model(vision_vocab_size=8448, vision_grid=2)  # same seed, same tables: no new parameters
    t, v, a = Modality.TEXT, Modality.VISION, Modality.ACTION
    ids = jnp.asarray([[7, 3, 1, 4, 1, 8192, 5, 9, 2, 6, 8193, 11]])
    modality = jnp.asarray([[t, v, v, v, v, v, v, v, v, v, v, a]])
    added = np.asarray(gridded.embed(ids, modality) - plain.embed(ids, modality))[0]
    d = 64  # the debug model's width: sin, cos of the column, then sin, cos of the row, d/4 each
    omega = 1.0 / 10_000.0 ** (np.arange(d // 4) / (d // 4))

    def expected(row, col):
        return 0.02 * np.concatenate(
            [np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)]
        )

    places = {1: (0, 0), 2: (0, 1), 3: (1, 0), 4: (1, 1), 6: (0, 0), 7: (0, 1), 8: (1, 0), 9: (1, 1)}
    for position in range(ids.shape[1]):
        want = expected(*places[position]) if position in places else np.zeros(d)
        np.testing.assert_allclose(added[position], want, atol=1e-6, err_msg=f"position {position}")


def test_vision_grid_refuses_to_generate_image_codes():
    """A generated code's place in its frame is not known one token at a time."""
    model = debug_model(vision_grid=2)
    with pytest.raises(ValueError, match="vision_grid"):
        model.decode_step(jnp.ones((1, 1), jnp.int32), Modality.VISION, jnp.zeros((1, 1), jnp.int32), None, 0)


def test_changing_a_vision_token_changes_only_later_positions():
    model = debug_model()
    ids, modality = mixed_batch(1)
    p = int(np.flatnonzero(modality[0] == Modality.VISION)[3])
    before = _logits(model, ids, modality)
    ids2 = ids.copy()
    ids2[0, p] = (ids[0, p] + 1) % 96
    after = _logits(model, ids2, modality)
    for name in VOCABS:
        np.testing.assert_array_equal(after[name][:, :p], before[name][:, :p])
        assert np.abs(after[name][:, p:] - before[name][:, p:]).min() > 0, name


def test_text_table_row_used_only_as_vision_id_has_no_effect():
    model = debug_model()
    ids, modality = mixed_batch(2)
    vision_only = set(ids[modality == Modality.VISION].tolist()) - set(
        ids[modality == Modality.TEXT].tolist()
    )
    row = sorted(vision_only)[0]
    before = _logits(model, ids, modality)
    table = model.text_embed[...]
    model.text_embed[...] = table.at[row].add(1.0)
    after = _logits(model, ids, modality)
    for name in VOCABS:
        np.testing.assert_array_equal(after[name], before[name])
    # ... while the vision table's row does matter
    model.vision_embed[...] = model.vision_embed[...].at[row].add(1.0)
    assert not np.allclose(_logits(model, ids, modality)["text"], before["text"])


def test_each_head_scores_only_its_vocabulary():
    model = debug_model()
    ids, modality = mixed_batch(2)
    before = _logits(model, ids, modality)
    assert {k: v.shape[-1] for k, v in before.items()} == {
        "text": 1024,
        "vision": 96,
        "latent": 8,
        "action": 256,
    }
    model.latent_head[...] = model.latent_head[...] * 2.0
    after = _logits(model, ids, modality)
    np.testing.assert_allclose(after["latent"], 2.0 * before["latent"], rtol=1e-6, atol=1e-7)
    for name in ("text", "vision", "action"):
        np.testing.assert_array_equal(after[name], before[name])
    assert set(model(jnp.asarray(ids), jnp.asarray(modality), heads=("action",))) == {"action"}


def test_scanned_and_unscanned_layers_agree(tmp_path):
    scanned = debug_model(seed=1)
    save_lapa_params(scanned, tmp_path / "params", float_dtype=None)
    unscanned = load_lapa_params(tmp_path / "params", debug_config(scan_layers=False))
    assert isinstance(unscanned.layers, nnx.List) and len(unscanned.layers) == 2
    ids, modality = mixed_batch(2)
    a, b = _logits(scanned, ids, modality), _logits(unscanned, ids, modality)
    for name in VOCABS:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6)


def _grads(cfg, ids, modality):
    """Gradients of a loss, and whether the traced program contains a remat."""
    model = VLAModel(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def loss(state):
        out = nnx.merge(graphdef, state)(ids, modality)
        return sum(jnp.mean(jax.nn.logsumexp(v, axis=-1)) for v in out.values())

    has_remat = "remat" in str(jax.make_jaxpr(jax.grad(loss))(state))
    return jax.jit(jax.grad(loss))(state), has_remat


@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_policies_give_identical_gradients(scan_layers):
    ids, modality = (jnp.asarray(a) for a in mixed_batch(2))
    reference, has_remat = _grads(debug_config(scan_layers=scan_layers), ids, modality)
    assert not has_remat
    for policy in ("full", "save-dots", "save-named-activations"):
        grads, has_remat = _grads(debug_config(scan_layers=scan_layers, remat_policy=policy), ids, modality)
        assert has_remat, policy
        chex.assert_trees_all_close(grads, reference, rtol=1e-5, atol=1e-7, custom_message=policy)


@pytest.mark.parametrize("vision_grid", [0, 2])  # 2: the 8 codes of each example are two 2x2 frames
def test_packed_examples_do_not_see_each_other(vision_grid):
    model = debug_model(vision_grid=vision_grid)
    a_ids, a_mod = mixed_batch(1, seed=1)
    b_ids, b_mod = mixed_batch(1, seed=2, text=3)
    packed_ids = np.concatenate([a_ids, b_ids], axis=1)
    packed_mod = np.concatenate([a_mod, b_mod], axis=1)
    na, nb = a_ids.shape[1], b_ids.shape[1]
    segments = np.concatenate([np.full((1, na), 1), np.full((1, nb), 2)], axis=1)
    positions = np.concatenate([np.arange(na), np.arange(nb)])[None]
    packed = _logits(model, packed_ids, packed_mod, jnp.asarray(positions), jnp.asarray(segments))
    alone_a = _logits(model, a_ids, a_mod)
    alone_b = _logits(model, b_ids, b_mod)
    for name in VOCABS:
        np.testing.assert_allclose(packed[name][:, :na], alone_a[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(packed[name][:, na:], alone_b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vision_grid", [0, 2])  # 2: the 8 codes of each example are two 2x2 frames
def test_left_padding_does_not_change_real_tokens(vision_grid):
    model = debug_model(vision_grid=vision_grid)
    ids, modality = mixed_batch(1)
    pad = 5
    padded_ids = np.pad(ids, [(0, 0), (pad, 0)])
    padded_mod = np.pad(modality, [(0, 0), (pad, 0)])
    mask = np.pad(np.ones_like(ids), [(0, 0), (pad, 0)])
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    padded = _logits(model, padded_ids, padded_mod, jnp.asarray(positions), jnp.asarray(mask))
    plain = _logits(model, ids, modality)
    for name in VOCABS:
        assert np.isfinite(padded[name]).all()
        np.testing.assert_allclose(padded[name][:, pad:], plain[name], rtol=1e-5, atol=1e-6)


def _reference_attention(q, k, v, segments):
    """Causal, same-segment softmax attention in float64 numpy."""
    t, d = q.shape[1], q.shape[-1]
    scores = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(d)
    allowed = np.tril(np.ones((t, t), bool))[None] & (segments[:, :, None] == segments[:, None, :])
    scores = np.where(allowed[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnd->btnd", weights, v)


def test_causal_query_blocks_match_full_attention_and_its_gradient(monkeypatch):
    """Self-attention skips the key blocks after each query block: same output and gradient as
    attending over every key, with padding, packing and a last block shorter than the others."""
    t = 2 * CAUSAL_BLOCK + 44
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, t, 2, 8)).astype(np.float32) for _ in range(3))
    segments = np.ones((2, t), np.int32)
    segments[0, :30] = 0  # left padding
    segments[1, CAUSAL_BLOCK - 10 :] = 2  # a second packed example across a block edge
    slots = jnp.arange(t)

    def attend(q, self_attention):
        seg = jnp.asarray(segments)
        return dot_product_attention(
            q,
            jnp.asarray(k),
            jnp.asarray(v),
            seg,
            seg,
            jnp.broadcast_to(slots, (2, t)),
            slots,
            self_attention=self_attention,
        )

    calls = []
    real_blocks = attention._causal_blocks
    monkeypatch.setattr(attention, "_causal_blocks", lambda *a: calls.append(1) or real_blocks(*a))
    blocked = np.asarray(attend(jnp.asarray(q), True))
    assert calls  # the block path ran
    reference = _reference_attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), segments
    )
    np.testing.assert_allclose(blocked, reference, rtol=1e-4, atol=1e-5)
    weights = jnp.asarray(rng.normal(size=blocked.shape).astype(np.float32))
    grads = [jax.grad(lambda q, s=s: jnp.sum(attend(q, s) * weights))(jnp.asarray(q)) for s in (True, False)]
    np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(grads[1]), rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(grads[0])).max() > 0.1


def test_grouped_query_attention_shapes_and_equivalence():
    """With num_kv_heads < num_heads each K/V head serves a group of query heads:
    duplicating K/V weights per group gives the same model in MHA form."""
    gqa = debug_model(seed=4, num_heads=4, num_kv_heads=2)
    assert gqa.layers.wk[...].shape == (2, 64, 32)
    mha = debug_model(seed=4, num_heads=4, num_kv_heads=4)
    for name in ("wq", "wo", "w_gate", "w_up", "w_down", "attn_norm", "mlp_norm"):
        getattr(mha.layers, name)[...] = getattr(gqa.layers, name)[...]
    for name in ("embed", "head"):
        for vocab in VOCABS:
            getattr(mha, f"{vocab}_{name}")[...] = getattr(gqa, f"{vocab}_{name}")[...]
    for name in ("wk", "wv"):
        w = getattr(gqa.layers, name)[...].reshape(2, 64, 2, 16)
        getattr(mha.layers, name)[...] = jnp.repeat(w, 2, axis=2).reshape(2, 64, 64)
    ids, modality = mixed_batch(2)
    a, b = _logits(gqa, ids, modality), _logits(mha, ids, modality)
    for name in VOCABS:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_bf16_compute_keeps_fp32_params_and_logits():
    fp32 = debug_model(seed=2)
    bf16 = debug_model(seed=2, dtype="bfloat16")
    assert bf16.layers.wq[...].dtype == jnp.float32
    ids, modality = mixed_batch(2)
    a, b = _logits(fp32, ids, modality), _logits(bf16, ids, modality)
    for name in VOCABS:
        assert b[name].dtype == np.float32
        np.testing.assert_allclose(b[name], a[name], atol=0.05)
        assert np.abs(b[name] - a[name]).max() > 0  # it really ran in bf16


def test_rope_rotates_interleaved_pairs():
    x = jnp.zeros((1, 1, 1, 4)).at[..., 0].set(1.0).at[..., 3].set(1.0)
    out = np.asarray(rope(x, jnp.asarray([[1]]), theta=100.0))[0, 0, 0]
    # pair 0 turns by 1 rad, pair 1 by 1/sqrt(100) = 0.1 rad
    np.testing.assert_allclose(out, [np.cos(1.0), np.sin(1.0), -np.sin(0.1), np.cos(0.1)], rtol=1e-6)


def test_presets():
    seven = get_model_config("7b")
    assert (seven.hidden_size, seven.intermediate_size, seven.num_layers, seven.num_heads) == (
        4096,
        11008,
        32,
        32,
    )
    assert (
        seven.text_vocab_size,
        seven.vision_vocab_size,
        seven.latent_vocab_size,
        seven.action_vocab_size,
    ) == (32000, 8448, 8, 256)
    assert seven.rope_theta == 50_000_000
    for preset in ("debug", "1b", "7b"):
        validate(get_model_config(preset))
    with pytest.raises(ValueError, match="unknown model preset"):
        get_model_config("13b")


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_kv_heads": 3}, "not a multiple of num_kv_heads"),
        ({"remat_policy": "sometimes"}, "remat_policy"),
        ({"attention_backend": "flash"}, "attention_backend"),
        ({"num_heads": 5}, "not divisible by num_heads"),
        ({"vision_grid": -1}, "vision_grid"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        debug_model(**overrides)


def test_cudnn_backend_is_a_clear_error_without_a_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU; the cuDNN path is exercised by the benchmark")
    model = debug_model(attention_backend="cudnn", dtype="bfloat16")
    ids, modality = mixed_batch(1)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        model(jnp.asarray(ids), jnp.asarray(modality))


def test_config_file_presets_and_command_line_overrides():
    """``--config=latent_pretraining/configs/vla.py:<preset>`` plus ``--config.a.b=value``."""
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT

    script = (
        "import json\n"
        "from absl import app, flags\n"
        "from ml_collections import config_flags\n"
        "config_flags.DEFINE_config_file('config')\n"
        "app.run(lambda _: print(json.dumps(flags.FLAGS.config.to_dict())))\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "--config=latent_pretraining/configs/vla.py:7b",
            "--config.model.remat_policy=full",
            "--config.model.num_kv_heads=8",
            "--config.mesh=!-1,8,1,1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    config = json.loads(out.stdout.strip().splitlines()[-1])
    assert config["preset"] == "7b" and config["model"]["hidden_size"] == 4096
    assert config["model"]["remat_policy"] == "full" and config["model"]["num_kv_heads"] == 8
    assert config["mesh"] == "!-1,8,1,1"
    with pytest.raises(ValueError, match="remat_policy"):
        cfg = get_model_config("7b")
        cfg.remat_policy = "fulll"
        validate(cfg)


def test_remat_policies_save_what_they_name(capsys):
    """Residuals kept for the backward pass: 'full' keeps fewest, 'none' most, and
    'save-named-activations' keeps the checkpoint_name'd activations."""
    ids, modality = (jnp.asarray(a) for a in mixed_batch(2))
    saved = {}
    for policy in ("none", "full", "save-dots", "save-named-activations"):
        model = debug_model(scan_layers=False, remat_policy=policy)
        graphdef, state = nnx.split(model)
        capsys.readouterr()
        jax.ad_checkpoint.print_saved_residuals(
            lambda s, g=graphdef: jnp.sum(nnx.merge(g, s)(ids, modality, heads=("text",))["text"]), state
        )
        saved[policy] = capsys.readouterr().out.splitlines()
    assert len(saved["full"]) < len(saved["save-dots"]) < len(saved["none"])
    assert len(saved["full"]) < len(saved["save-named-activations"]) < len(saved["none"])
    assert not any("named" in line for line in saved["full"])
    assert sum("named" in line for line in saved["save-named-activations"]) >= 2 * 2  # >= 2 per layer
