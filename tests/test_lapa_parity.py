"""Parity with LAPA's own code on a checkpoint it wrote (see the fixture's README.md).

The fixture directory is ``$LAPA_VLA_FIXTURE`` when set, else
``tests/fixtures/lapa_vla_tiny``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LAPA_VLA_FIXTURE
from helpers import lapa_modality

from latent_pretraining.config import from_lapa_config
from latent_pretraining.lapa_checkpoint import load_lapa_params, save_lapa_params
from latent_pretraining.sampler import Sampler

FIXTURE = LAPA_VLA_FIXTURE
# LAPA's head names -> ours
HEADS = {"text": "text", "vision": "vision", "delta": "latent", "action": "action"}

if not FIXTURE.is_dir():
    raise FileNotFoundError(f"LAPA parity fixture not found at {FIXTURE}; set LAPA_VLA_FIXTURE")


def _config(scan_layers: bool = True):
    cfg = from_lapa_config(FIXTURE / "config.json")
    cfg.dtype = "float32"
    cfg.scan_layers = scan_layers
    return cfg


@pytest.fixture(scope="module")
def model():
    return load_lapa_params(f"params::{FIXTURE / 'params'}", _config())


def _modality(prefix: str) -> np.ndarray:
    return lapa_modality(FIXTURE, prefix)


def _batches() -> list[str]:
    return sorted({p.name.split("_")[0] for p in FIXTURE.glob("batch*_input_ids.npy")})


def _forward(model, batch: str) -> dict[str, np.ndarray]:
    ids = np.load(FIXTURE / f"{batch}_input_ids.npy")
    mask = np.load(FIXTURE / f"{batch}_attention_mask.npy")
    pos_file = FIXTURE / f"{batch}_position_ids.npy"
    positions = jnp.asarray(np.load(pos_file)) if pos_file.exists() else None
    out = jax.jit(lambda m, *a: m(*a))(
        model, jnp.asarray(ids), jnp.asarray(_modality(batch)), positions, jnp.asarray(mask)
    )
    return {k: np.asarray(v) for k, v in out.items()}


def _assert_logits_match(out: dict[str, np.ndarray], batch: str, suffix: str = "") -> int:
    valid = np.load(FIXTURE / f"{batch}_attention_mask.npy") == 1
    checked = 0
    for lapa_head, ours in HEADS.items():
        path = FIXTURE / f"{batch}_{lapa_head}_logits{suffix}.npy"
        if not path.exists():
            continue
        expected = np.load(path)
        assert out[ours].shape == expected.shape, (batch, lapa_head)
        np.testing.assert_allclose(
            out[ours][valid], expected[valid], rtol=1e-5, atol=1e-5, err_msg=f"{batch} {lapa_head} head"
        )
        checked += 1
    return checked


@pytest.mark.parametrize("batch", _batches())
def test_every_head_matches_lapa(model, batch):
    assert _assert_logits_match(_forward(model, batch), batch) == 4


def test_unscanned_model_reads_scanned_file_with_same_logits(model):
    unscanned = load_lapa_params(FIXTURE / "params", _config(scan_layers=False))
    for batch in _batches():
        assert _assert_logits_match(_forward(unscanned, batch), batch) == 4


def test_bf16_release_checkpoint_matches_lapa():
    if not (FIXTURE / "params_bf16").exists():
        pytest.skip("this fixture has no bf16 checkpoint")
    bf16_model = load_lapa_params(FIXTURE / "params_bf16", _config())
    checked = 0
    for batch in _batches():
        checked += _assert_logits_match(_forward(bf16_model, batch), batch, "_from_params_bf16")
    assert checked > 0


def test_writer_reproduces_lapa_files_byte_for_byte(tmp_path):
    """Written from a model in the fixture's own layout (scanned or per layer, as LAPA ran it)."""
    scan_layers = from_lapa_config(FIXTURE / "config.json").scan_layers
    model = load_lapa_params(FIXTURE / "params", _config(scan_layers=scan_layers))
    save_lapa_params(model, tmp_path / "params", float_dtype=None)
    assert (tmp_path / "params").read_bytes() == (FIXTURE / "params").read_bytes()
    if (FIXTURE / "params_bf16").exists():
        save_lapa_params(model, tmp_path / "params_bf16", float_dtype="bf16")
        assert (tmp_path / "params_bf16").read_bytes() == (FIXTURE / "params_bf16").read_bytes()


def _generation_inputs():
    ids = np.load(FIXTURE / "gen_input_ids.npy")
    return ids, _modality("gen"), np.load(FIXTURE / "gen_attention_mask.npy")


def test_greedy_generation_matches_lapa(model):
    ids, modality, mask = _generation_inputs()
    expected = np.load(FIXTURE / "gen_tokens_greedy_topk1.npy")
    tokens = Sampler(model).generate(ids, modality, mask, vocab="action", num_tokens=expected.shape[1])
    np.testing.assert_array_equal(tokens, expected)


@pytest.mark.parametrize("mode,temperature", [("default", 1.0), ("temp0.05", 0.05)])
def test_sampled_generation_matches_lapa_rng_stream(model, mode, temperature):
    """LAPA samples with a per-step ``split`` of its key; JAX >= 0.5 changed the
    threefry bits, so the old stream needs ``jax_threefry_partitionable=False``."""
    ids, modality, mask = _generation_inputs()
    expected = np.load(FIXTURE / f"gen_tokens_{mode}.npy")
    key = jnp.asarray(np.load(FIXTURE / "gen_prng_key_passed_to_generate_vision.npy"))
    if not hasattr(jax.config, "jax_threefry_partitionable"):
        pytest.skip("this JAX no longer has the threefry_partitionable switch LAPA's random bits need")
    previous = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    try:
        tokens = Sampler(model).generate(
            ids,
            modality,
            mask,
            vocab="action",
            num_tokens=expected.shape[1],
            temperature=temperature,
            rng=key,
        )
    finally:
        jax.config.update("jax_threefry_partitionable", previous)
    np.testing.assert_array_equal(tokens, expected)
