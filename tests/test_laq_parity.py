"""LAPA's PyTorch LAQ fixture converted to our model reproduces every recorded output.

The fixture directory is ``$LAQ_TORCH_FIXTURE`` when set, else ``tests/fixtures/laq_torch_tiny``.
The state_dict is read without torch, so this test needs no optional extra.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LAQ_TORCH_FIXTURE

from lam.checkpoint import load_lam, save_lam
from lam.convert import infer_config, load_lapa_laq, main
from lam.torch_checkpoint import load_state_dict

FIXTURE = LAQ_TORCH_FIXTURE
ATOL = 1e-4


def _load(name: str) -> np.ndarray:
    return np.load(FIXTURE / f"{name}.npy")


@pytest.fixture(scope="module")
def model():
    return load_lapa_laq(FIXTURE / "laq.pt", image_size=64, code_seq_len=4)


@pytest.fixture(scope="module")
def frames() -> jnp.ndarray:
    return jnp.asarray(np.transpose(_load("video"), (0, 2, 3, 4, 1)))  # (B, C, T, H, W) -> (B, T, H, W, C)


def test_config_inferred_from_shapes():
    cfg = infer_config(load_state_dict(FIXTURE / "laq.pt"), image_size=64, code_seq_len=4)
    assert (cfg.dim, cfg.quant_dim, cfg.codebook_size, cfg.patch_size) == (128, 16, 8, 8)
    assert (cfg.spatial_depth, cfg.temporal_depth, cfg.heads, cfg.dim_head) == (2, 2, 4, 32)
    assert cfg.lapa_token_layout


def test_encoder_tokens_match(model, frames):
    tokens = model.embed_patches(frames)
    np.testing.assert_allclose(np.asarray(tokens), _load("patch_tokens"), atol=ATOL)
    first, last = model.encode(tokens)
    np.testing.assert_allclose(np.asarray(first), _load("first_tokens"), atol=ATOL)
    np.testing.assert_allclose(np.asarray(last), _load("last_tokens"), atol=ATOL)
    delta = model.action_vectors(first, last)
    np.testing.assert_allclose(np.asarray(delta), _load("nsvq_delta"), atol=ATOL)


def test_codes_and_reconstruction_match(model, frames):
    codes = model.codes(frames)
    np.testing.assert_array_equal(np.asarray(codes), _load("indices"))
    tokens = model.action_tokens(model.quantizer.lookup(codes))
    np.testing.assert_allclose(np.asarray(tokens), _load("vq_tokens"), atol=ATOL)
    recon = model.reconstruct(frames)
    np.testing.assert_allclose(np.asarray(recon), np.transpose(_load("recon"), (0, 2, 3, 1)), atol=ATOL)


def test_user_chosen_codes_match(model, frames):
    forced = jnp.asarray(_load("forced_indices"))
    recon = model.reconstruct(frames, forced)
    expected = np.transpose(_load("recon_forced_indices"), (0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(recon), expected, atol=ATOL)


def test_token_layout_quirk_matters(model, frames):
    """Without LAPA's reshape of the quantized vectors the decoder's context differs."""
    codes = model.codes(frames)
    plain = model.project_out(model.quantizer.lookup(codes))
    assert np.abs(np.asarray(plain) - _load("vq_tokens")).max() > 1e-2


def test_convert_cli_export_round_trip(tmp_path, frames):
    out = tmp_path / "export"
    main(["--checkpoint", str(FIXTURE / "laq.pt"), "--out", str(out), "--image_size", "64"])
    reloaded = load_lam(out)
    np.testing.assert_array_equal(np.asarray(reloaded.codes(frames)), _load("indices"))
    save_lam(reloaded, tmp_path / "again")
    assert (tmp_path / "again" / "lam_state.msgpack").read_bytes() == (out / "lam_state.msgpack").read_bytes()


def test_wrong_checkpoint_is_named(tmp_path):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"not_a_checkpoint\.pt"):
        load_lapa_laq(bad)
