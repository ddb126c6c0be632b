"""Parity with LWM's VQGAN on a checkpoint written by LWM/LAPA's own code (see the fixture's README).

The fixture directory is ``$LWM_VQGAN_FIXTURE`` when set, else ``tests/fixtures/lwm_vqgan_tiny``.
"""

from __future__ import annotations

import json
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LWM_VQGAN_FIXTURE

from latent_pretraining.vqgan.images import to_model_range
from latent_pretraining.vqgan.lwm_checkpoint import (
    VQGANCheckpointError,
    load_lwm_vqgan,
    params_as_lwm_dict,
    save_lwm_vqgan,
)
from latent_pretraining.vqgan.model import get_vqgan_config

FIXTURE = LWM_VQGAN_FIXTURE
if not FIXTURE.is_dir():
    raise FileNotFoundError(f"VQGAN parity fixture not found at {FIXTURE}; set LWM_VQGAN_FIXTURE")


def fixture_config():
    recorded = json.loads((FIXTURE / "config.json").read_text())["config"]
    cfg = get_vqgan_config("lwm")
    for key in (
        "resolution",
        "hidden_channels",
        "num_res_blocks",
        "z_channels",
        "num_embeddings",
        "quantized_embed_dim",
    ):
        cfg[key] = recorded[key]
    cfg.channel_mult = tuple(recorded["channel_mult"])
    assert not recorded.get("attn_resolutions"), "LWM's released VQGAN has no attention"
    return cfg


@pytest.fixture(scope="module")
def model():
    return load_lwm_vqgan(FIXTURE / "vqgan", fixture_config())


def test_images_are_lapa_scaled():
    np.testing.assert_allclose(
        to_model_range(np.load(FIXTURE / "images_uint8.npy")), np.load(FIXTURE / "images.npy"), atol=1e-6
    )


def test_encoder_reproduces_lwm_codes(model):
    images = jnp.asarray(np.load(FIXTURE / "images.npy"))
    np.testing.assert_allclose(
        np.asarray(model.pre_quant(images)), np.load(FIXTURE / "pre_quant.npy"), atol=1e-4
    )
    quantized, codes = model.encode(images)
    expected = np.load(FIXTURE / "indices.npy")
    margin = np.load(FIXTURE / "argmin_margin.npy")
    clear = margin > 1e-4  # where float32 noise cannot flip the nearest code
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(np.asarray(codes)[clear], expected[clear])
    np.testing.assert_allclose(
        np.asarray(quantized)[clear], np.load(FIXTURE / "quantized.npy")[clear], atol=1e-4
    )


def test_decoder_reproduces_lwm_images(model):
    decoded = model.decode_codes(jnp.asarray(np.load(FIXTURE / "indices.npy")))
    np.testing.assert_allclose(np.asarray(decoded), np.load(FIXTURE / "decoded.npy"), atol=1e-4)
    from_quantized = model.decode(jnp.asarray(np.load(FIXTURE / "quantized.npy")))
    np.testing.assert_allclose(
        np.asarray(from_quantized), np.load(FIXTURE / "decoded_from_quantized.npy"), atol=1e-4
    )


def test_video_input_folds_to_frames(model):
    images = jnp.asarray(np.load(FIXTURE / "images.npy"))
    _, per_image = model.encode(images)
    _, per_video = model.encode(images[None])
    np.testing.assert_array_equal(np.asarray(per_video)[0], np.asarray(per_image))


def test_writer_round_trips_the_lwm_pickle(model, tmp_path):
    save_lwm_vqgan(model, tmp_path / "vqgan")
    with open(FIXTURE / "vqgan", "rb") as f:
        original = pickle.load(f)
    with open(tmp_path / "vqgan", "rb") as f:
        written = pickle.load(f)

    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(original), flat(written)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert flat(params_as_lwm_dict(model)).keys() == a.keys()


def test_mismatched_config_is_an_error_naming_the_parameter(tmp_path):
    cfg = fixture_config()
    codes, dim = cfg.num_embeddings, cfg.quantized_embed_dim  # the fixture's codebook
    cfg.num_embeddings = 2 * codes
    with pytest.raises(
        VQGANCheckpointError,
        match=rf"quantize/embeddings has shape \({codes}, {dim}\).*\({2 * codes}, {dim}\)",
    ):
        load_lwm_vqgan(FIXTURE / "vqgan", cfg)
    cfg = fixture_config()
    cfg.channel_mult = (1, 2, 2)
    with pytest.raises(
        VQGANCheckpointError, match=r"UpsamplingBlock_2/ResnetBlock_0/Conv_0/bias has shape \(64,\)"
    ):
        load_lwm_vqgan(FIXTURE / "vqgan", cfg)
    (tmp_path / "bad").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(VQGANCheckpointError, match="expected a pickled params dict"):
        load_lwm_vqgan(tmp_path / "bad", fixture_config())
