"""LAPA ``params::`` checkpoints: round trips, layouts, missing tensors and errors."""

from __future__ import annotations

import logging

import jax
import msgpack
import numpy as np
import pytest
from flax import nnx
from helpers import debug_config, debug_model

from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.lapa_checkpoint import (
    CheckpointFormatError,
    decode_array,
    encode_array,
    iter_records,
    load_lapa_params,
    save_lapa_params,
)


def _params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _write(path, records):
    with open(path, "wb") as f:
        for key, array in records:
            f.write(msgpack.packb((list(key), encode_array(np.asarray(array))), use_bin_type=True))


def test_array_codec_matches_flax_serialization():
    from flax import serialization

    for array in (np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2,), jax.numpy.bfloat16)):
        assert encode_array(array) == serialization.to_bytes(array)
        np.testing.assert_array_equal(decode_array(serialization.to_bytes(array), "x"), array)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_round_trip_fp32_is_exact(tmp_path, scan_layers):
    model = debug_model(seed=1, scan_layers=scan_layers)
    save_lapa_params(model, f"params::{tmp_path / 'ckpt'}", float_dtype=None)
    keys = [k for k, _ in iter_records(tmp_path / "ckpt")]
    assert keys == sorted(keys)
    if scan_layers:
        assert ("transformer", "h", "scan_decoder", "attention", "wq", "kernel") in keys
    else:
        assert ("transformer", "h", "1", "feed_forward", "w2", "kernel") in keys
    assert ("transformer", "dte", "embedding") in keys and ("delta_head", "kernel") in keys
    saved = _params(model)
    for target_scan in (True, False):  # either file layout loads into either model layout
        got = _params(load_lapa_params(tmp_path / "ckpt", debug_config(scan_layers=target_scan)))
        assert got.keys() == _params(debug_model(seed=1, scan_layers=target_scan)).keys()
        for path, value in got.items():
            if target_scan == scan_layers or path[0] != "layers":
                expected = saved[path]
            elif target_scan:  # ('layers', name) <- the saved per-layer tensors, stacked
                expected = np.stack([saved[("layers", i, path[1])] for i in range(2)])
            else:  # ('layers', i, name) <- slice i of the saved stacked tensor
                expected = saved[("layers", path[2])][path[1]]
            np.testing.assert_array_equal(value, expected, err_msg=str(path))


def test_bf16_round_trip_loses_only_bf16_rounding(tmp_path):
    model = debug_model(seed=2)
    save_lapa_params(model, tmp_path / "ckpt")  # tux's default: bf16
    dtypes = {a.dtype for _, a in iter_records(tmp_path / "ckpt")}
    assert dtypes == {np.dtype(jax.numpy.bfloat16)}
    got = _params(load_lapa_params(tmp_path / "ckpt", debug_config()))
    for path, value in _params(model).items():
        assert got[path].dtype == np.float32
        np.testing.assert_allclose(got[path], value, rtol=2**-8, atol=0)


def test_loads_onto_a_sharded_mesh(tmp_path, eight_devices):
    model = debug_model(seed=3)
    save_lapa_params(model, tmp_path / "ckpt", float_dtype=None)
    mesh = make_mesh("1,2,2,2")
    loaded = load_lapa_params(tmp_path / "ckpt", debug_config(), mesh=mesh)
    wq = loaded.layers.wq[...]
    assert wq.sharding.mesh.shape == mesh.shape and wq.sharding.spec[-1] == "tp"
    np.testing.assert_array_equal(np.asarray(wq), np.asarray(model.layers.wq[...]))


def test_missing_tensors_get_the_model_initialiser_and_a_log_line(tmp_path, caplog):
    """E.g. finetuning from a latent-pretrained checkpoint that has no action table/head."""
    model = debug_model(seed=4)
    save_lapa_params(model, tmp_path / "full", float_dtype=None)
    records = [
        (k, a) for k, a in iter_records(tmp_path / "full") if "ate" not in k and "action_head" not in k
    ]
    _write(tmp_path / "latent_only", records)
    with caplog.at_level(logging.WARNING):
        loaded = load_lapa_params(
            tmp_path / "latent_only", debug_config(), seed=9, initialise_missing=("action",)
        )
    assert "action_embed" in caplog.text and "action_head" in caplog.text
    got, kept = _params(loaded), _params(model)
    np.testing.assert_array_equal(got[("latent_embed",)], kept[("latent_embed",)])
    fresh = _params(debug_model(seed=9))
    for name in ("action_embed", "action_head"):
        # the model's own normal(initializer_range) init, not LAPA's lecun_normal
        np.testing.assert_allclose(got[(name,)], fresh[(name,)], rtol=1e-6)  # jit vs eager: 1 ulp
        assert abs(got[(name,)].std() - 0.02) < 0.005


def test_unknown_parameter_is_an_error_naming_it(tmp_path):
    model = debug_model()
    save_lapa_params(model, tmp_path / "ckpt", float_dtype=None)
    records = [
        *iter_records(tmp_path / "ckpt"),
        (("transformer", "mystery", "kernel"), np.zeros(3, np.float32)),
    ]
    _write(tmp_path / "bad", records)
    with pytest.raises(CheckpointFormatError, match="unknown parameter transformer/mystery/kernel"):
        load_lapa_params(tmp_path / "bad", debug_config())


def test_shape_mismatch_is_an_error_naming_file_and_tensor(tmp_path):
    save_lapa_params(debug_model(), tmp_path / "ckpt", float_dtype=None)
    cfg = debug_config(action_vocab_size=245)
    with pytest.raises(
        CheckpointFormatError,
        match=r"ckpt: action_head/kernel: shape \(64, 256\) but the model expects \(64, 245\)",
    ):
        load_lapa_params(tmp_path / "ckpt", cfg)


def test_missing_layers_of_an_unscanned_file_are_an_error(tmp_path):
    save_lapa_params(debug_model(scan_layers=False), tmp_path / "ckpt", float_dtype=None)
    records = [(k, a) for k, a in iter_records(tmp_path / "ckpt") if k[:3] != ("transformer", "h", "1")]
    _write(tmp_path / "holes", records)
    with pytest.raises(CheckpointFormatError, match=r"layers missing .*\[1\]"):
        load_lapa_params(tmp_path / "holes", debug_config(scan_layers=True))


def test_corrupt_record_is_an_error(tmp_path):
    (tmp_path / "ckpt").write_bytes(msgpack.packb([["a"], b"\x01\x02", "extra"]))
    with pytest.raises(CheckpointFormatError, match="record 0"):
        list(iter_records(tmp_path / "ckpt"))


def test_save_is_atomic(tmp_path, monkeypatch):
    model = debug_model()
    target = tmp_path / "ckpt"
    save_lapa_params(model, target, float_dtype=None)
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("latent_pretraining.lapa_checkpoint.encode_array", fail)
    with pytest.raises(OSError, match="disk full"):
        save_lapa_params(model, target)
    assert target.read_bytes() == before  # the complete old file is untouched
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_file_is_an_error_not_missing_tensors(tmp_path):
    save_lapa_params(debug_model(), tmp_path / "ckpt", float_dtype=None)
    data = (tmp_path / "ckpt").read_bytes()
    (tmp_path / "cut").write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(CheckpointFormatError, match="cut: truncated or corrupt after byte"):
        load_lapa_params(tmp_path / "cut", debug_config())


def test_only_vocabulary_tables_may_be_missing(tmp_path):
    save_lapa_params(debug_model(), tmp_path / "ckpt", float_dtype=None)
    records = [(k, a) for k, a in iter_records(tmp_path / "ckpt") if k != ("transformer", "ln_f", "kernel")]
    _write(tmp_path / "no_norm", records)
    with pytest.raises(CheckpointFormatError, match="missing parameters final_norm"):
        load_lapa_params(tmp_path / "no_norm", debug_config())


def test_tensor_too_large_for_the_format_is_refused_before_writing(tmp_path, monkeypatch):
    """msgpack records hold at most 4 GiB (7B fp32 stacked MLP weights are 5.8 GB)."""
    monkeypatch.setattr("latent_pretraining.lapa_checkpoint.MAX_RECORD_BYTES", 200_000)
    model = debug_model()  # the text head: 64 x 1024 fp32 = 262,144 bytes; 131,072 in bf16
    with pytest.raises(
        CheckpointFormatError, match=r"lm_head/kernel: 262,144 bytes .* save with float_dtype='bf16'"
    ):
        save_lapa_params(model, tmp_path / "ckpt", float_dtype=None)
    assert not list(tmp_path.iterdir())
    save_lapa_params(model, tmp_path / "ckpt", float_dtype="bf16")
    assert (tmp_path / "ckpt").exists()
