"""The checkpoint readers refuse hostile, truncated and corrupt files with errors that name the file.

VQGAN pickles run no code, torch storages are never read out of bounds, and a LAPA ``params::``
file that is cut short or has flipped bytes is an error, not a model with fresh embeddings.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import msgpack
import numpy as np
import pytest
from conftest import LAQ_TORCH_FIXTURE, LWM_VQGAN_FIXTURE, REPO_ROOT
from helpers import debug_config, debug_model

from lam.torch_checkpoint import TorchCheckpointError, load_state_dict
from latent_pretraining.lapa_checkpoint import (
    CheckpointFormatError,
    encode_array,
    iter_records,
    load_lapa_params,
    save_lapa_params,
)
from latent_pretraining.vqgan.lwm_checkpoint import VQGANCheckpointError, load_lwm_vqgan
from latent_pretraining.vqgan.model import get_vqgan_config

VQGAN_FIXTURE = LWM_VQGAN_FIXTURE
LAQ_FIXTURE = LAQ_TORCH_FIXTURE


# --- VQGAN pickles -------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls ``call(arg)``: what a hostile checkpoint does."""

    def __init__(self, call, arg: str):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_vqgan_pickle_that_runs_code_is_refused(tmp_path, how):
    marker = tmp_path / "ran"
    payload = {
        "os.system": _RunsCode(os.system, f"touch {marker}"),
        "builtins.eval": _RunsCode(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    }[how]
    refused = {"os.system": f"{os.system.__module__}.system", "builtins.eval": "builtins.eval"}[how]
    path = tmp_path / "vqgan"
    path.write_bytes(pickle.dumps({"params": {"encoder": payload}}, protocol=4))
    with pytest.raises(VQGANCheckpointError, match=rf"{re.escape(str(path))}: refused .*{refused}"):
        load_lwm_vqgan(path, get_vqgan_config("lwm"))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["cut in half", "random bytes"])
def test_truncated_or_random_vqgan_file_is_an_error_naming_it(tmp_path, damage):
    data = (VQGAN_FIXTURE / "vqgan").read_bytes()
    path = tmp_path / "vqgan"
    if damage == "cut in half":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VQGANCheckpointError, match=rf"{re.escape(str(path))}: truncated or not a pickle"):
        load_lwm_vqgan(path, get_vqgan_config("lwm"))


def test_vqgan_pickle_of_frozen_and_ordered_dicts_still_loads(tmp_path):
    """What LWM files may hold (FrozenDict/OrderedDict trees of numpy arrays) is admitted."""
    from flax.core import FrozenDict

    with open(VQGAN_FIXTURE / "vqgan", "rb") as f:
        tree = pickle.load(f)  # the trusted fixture
    cfg = get_vqgan_config("lwm")
    recorded = json.loads((VQGAN_FIXTURE / "config.json").read_text())["config"]
    for key in ("resolution", "hidden_channels", "num_res_blocks", "z_channels", "num_embeddings"):
        cfg[key] = recorded[key]
    cfg.quantized_embed_dim, cfg.channel_mult = (
        recorded["quantized_embed_dim"],
        tuple(recorded["channel_mult"]),
    )
    (tmp_path / "vqgan").write_bytes(pickle.dumps(FrozenDict(params=OrderedDict(tree)), protocol=4))
    model = load_lwm_vqgan(tmp_path / "vqgan", cfg)
    np.testing.assert_array_equal(np.asarray(model.codebook[...]), tree["quantize"]["embeddings"])


# --- torch state_dict zips -----------------------------------------------------------------------


def _rebuild_tensor_v2(*args):
    """Pickled by reference only; renamed to torch._utils._rebuild_tensor_v2 in the file."""
    raise AssertionError("never called")


class FloatStorage:
    """Pickled by reference only; renamed to torch.FloatStorage in the file."""


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    """A tensor as ``torch.save`` pickles it: a rebuild call on a persistent storage id."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return _rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _write_torch_zip(path: Path, tensors: dict[str, _Tensor], storage: np.ndarray) -> None:
    """A ``torch.save`` zip of float32 tensors on storage "0", written without torch (protocol 2's
    GLOBAL opcodes name this module's stand-ins, then are renamed to torch's)."""
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(OrderedDict(tensors))
    here = __name__.encode()
    data = (
        buffer.getvalue()
        .replace(b"c" + here + b"\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor_v2\n")
        .replace(b"c" + here + b"\nFloatStorage\n", b"ctorch\nFloatStorage\n")
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/data/0", np.asarray(storage, "<f4").tobytes())


def test_torch_views_of_one_storage_load(tmp_path):
    """Shared storages, offsets, zero strides and empty tensors are legitimate and still load."""
    six = _Storage("0", 6)
    _write_torch_zip(
        tmp_path / "views.pt",
        {
            "whole": _Tensor(six, 0, (2, 3), (3, 1)),
            "transposed": _Tensor(six, 0, (3, 2), (1, 3)),
            "tail": _Tensor(six, 4, (2,), (1,)),
            "expanded": _Tensor(six, 5, (2, 2), (0, 0)),
            "scalar": _Tensor(six, 5, (), ()),
            "empty": _Tensor(six, 6, (0, 4), (4, 1)),
        },
        np.arange(6),
    )
    state = load_state_dict(tmp_path / "views.pt")
    np.testing.assert_array_equal(state["whole"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(state["transposed"], np.arange(6).reshape(2, 3).T)
    np.testing.assert_array_equal(state["tail"], [4, 5])
    np.testing.assert_array_equal(state["expanded"], np.full((2, 2), 5))
    assert state["scalar"] == 5
    assert state["empty"].shape == (0, 4)


@pytest.mark.parametrize(
    ("offset", "size", "stride", "reason"),
    [
        (0, (3,), (2,), r"elements up to 4 of storage 0, which holds 4"),
        (2, (2, 2), (1, 1), r"elements up to 4 of storage 0, which holds 4"),
        (4, (), (), r"elements up to 4 of storage 0, which holds 4"),
        (-1, (2,), (1,), r"negative offset, size or stride"),
        (3, (2,), (-1,), r"negative offset, size or stride"),
        (0, (2, 2), (1,), r"2 sizes but 1 strides"),
    ],
)
def test_torch_tensor_outside_its_storage_is_refused_naming_it(tmp_path, offset, size, stride, reason):
    path = tmp_path / "forged.pt"
    four = _Storage("0", 4)
    _write_torch_zip(
        path,
        {"fine": _Tensor(four, 0, (4,), (1,)), "forged": _Tensor(four, offset, size, stride)},
        np.arange(4),
    )
    with pytest.raises(TorchCheckpointError, match=rf"{re.escape(str(path))}: tensor forged: .*{reason}"):
        load_state_dict(path)


def test_torch_zip_damage_is_an_error_naming_the_file(tmp_path):
    """A missing storage member, a corrupted member (bad CRC), a cut pickle and an unknown
    storage type end in TorchCheckpointError naming the file, not KeyError/BadZipFile."""
    four = _Storage("0", 4)
    good = tmp_path / "good.pt"
    _write_torch_zip(good, {"w": _Tensor(four, 0, (4,), (1,))}, np.arange(4))
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}

    def rewrite(name: str, edit) -> Path:
        path = tmp_path / f"{name}.pt"
        with zipfile.ZipFile(path, "w") as z:
            for member, data in members.items():
                if (data := edit(member, data)) is not None:
                    z.writestr(member, data)
        return path

    cases = {
        "no_storage": (lambda m, d: None if m.endswith("/data/0") else d, r"storage 0 is missing"),
        "cut_pickle": (lambda m, d: d[: len(d) // 2] if m.endswith("data.pkl") else d, r"damaged checkpoint"),
        "bad_type": (
            lambda m, d: d.replace(b"FloatStorage", b"FancyStorage") if m.endswith("data.pkl") else d,
            r"unsupported storage type torch.FancyStorage",
        ),
    }
    for name, (edit, message) in cases.items():
        path = rewrite(name, edit)
        with pytest.raises(TorchCheckpointError, match=rf"{re.escape(str(path))}: .*{message}"):
            load_state_dict(path)
    crc = tmp_path / "crc.pt"
    data = bytearray(good.read_bytes())
    start = data.index(np.arange(4, dtype="<f4").tobytes())  # the stored (uncompressed) storage bytes
    data[start] ^= 0xFF
    crc.write_bytes(bytes(data))
    with pytest.raises(TorchCheckpointError, match=rf"{re.escape(str(crc))}: damaged checkpoint"):
        load_state_dict(crc)


@pytest.fixture(scope="module")
def short_storage_laq(tmp_path_factory) -> Path:
    """LAPA's LAQ fixture with the storage of ``vq.codebooks`` cut to half its length."""
    codebook = load_state_dict(LAQ_FIXTURE / "laq.pt")["vq.codebooks"].tobytes()
    path = tmp_path_factory.mktemp("laq") / "short.pt"
    with zipfile.ZipFile(LAQ_FIXTURE / "laq.pt") as source, zipfile.ZipFile(path, "w") as target:
        (storage,) = [n for n in source.namelist() if "/data/" in n and source.read(n) == codebook]
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[: len(data) // 2] if name == storage else data)
    return path


def test_torch_storage_shorter_than_its_tensor_is_refused_naming_it(short_storage_laq):
    with pytest.raises(
        TorchCheckpointError,
        match=rf"{re.escape(str(short_storage_laq))}: tensor vq\.codebooks: storage \d+ has",
    ):
        load_state_dict(short_storage_laq)


def test_convert_of_a_short_storage_fails_and_writes_no_export(short_storage_laq, tmp_path):
    out = tmp_path / "export"
    args = ["--checkpoint", str(short_storage_laq), "--out", str(out), "--image_size", "64"]  # fixture's size
    result = subprocess.run(
        [sys.executable, "-m", "lam.convert", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "tensor vq.codebooks" in result.stderr
    assert not out.exists()


# --- LAPA params:: files ---------------------------------------------------------------------------


def _write(path: Path, records) -> None:
    with open(path, "wb") as f:
        for key, array in records:
            f.write(msgpack.packb((list(key), encode_array(np.asarray(array))), use_bin_type=True))


@pytest.fixture(scope="module")
def lapa_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lapa") / "ckpt"
    save_lapa_params(debug_model(seed=5), path, float_dtype=None)
    return path


def test_lapa_file_cut_after_ln_f_is_refused_naming_the_lost_tables(lapa_file, tmp_path):
    """Records are sorted: a file cut after ``ln_f`` loses exactly vte, wte and vision_head."""
    records = []
    for key, array in iter_records(lapa_file):
        records.append((key, array))
        if key == ("transformer", "ln_f", "kernel"):
            break
    _write(tmp_path / "cut", records)
    for initialise_missing in ((), ("latent", "action")):
        with pytest.raises(CheckpointFormatError) as error:
            load_lapa_params(tmp_path / "cut", debug_config(), initialise_missing=initialise_missing)
        message = str(error.value)
        assert message.startswith(f"{tmp_path / 'cut'}: missing parameters")
        for name in ("transformer/vte/embedding", "transformer/wte/embedding", "vision_head/kernel"):
            assert name in message
        assert "final_norm" not in message and "ate/embedding" not in message


def test_lapa_file_without_action_tables_loads_only_when_asked(lapa_file, tmp_path):
    records = [(k, a) for k, a in iter_records(lapa_file) if k[-2] not in ("ate", "action_head")]
    _write(tmp_path / "latent_only", records)
    with pytest.raises(
        CheckpointFormatError,
        match=r"latent_only: no action table or head \(action_embed \(transformer/ate/embedding\).*"
        r"initialise_missing=\('action',\)",
    ):
        load_lapa_params(tmp_path / "latent_only", debug_config())
    with pytest.raises(CheckpointFormatError, match=r"initialise_missing=\('action',\)"):
        load_lapa_params(tmp_path / "latent_only", debug_config(), initialise_missing=("latent",))
    model = load_lapa_params(tmp_path / "latent_only", debug_config(), initialise_missing=("action",))
    assert model.action_head[...].shape == (64, 256)
    with pytest.raises(ValueError, match=r"initialise_missing: 'text' .*only 'latent', 'action'"):
        load_lapa_params(tmp_path / "latent_only", debug_config(), initialise_missing=("text",))


def _record_offsets(data: bytes) -> list[int]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    unpacker.feed(data)
    offsets = [0]
    for _ in unpacker:
        offsets.append(unpacker.tell())
    return offsets


# (record, byte within it, xor mask): the key's array header and strings, the value's bin header,
# the ndarray ExtType header, its shape, dtype name and buffer header
FLIPS = [
    (0, 0, 0xFF),
    (0, 0, 0x10),
    (0, 1, 0xFF),
    (0, 2, 0x10),
    (0, 24, 0xFF),
    (3, 1, 0x01),
    (3, 1, 0x04),
    (3, 2, 0xFF),
    (3, 3, 0xFF),
    (3, 28, 0x01),
    (3, 30, 0x01),
    (3, 31, 0x04),
    (3, 42, 0xFF),
    (3, 43, 0x01),
    (3, 44, 0xFF),
    (3, 46, 0x01),
    (3, 51, 0x01),
    (3, 54, 0xFF),
]


@pytest.mark.parametrize(("start", "stop", "mask"), [(0, 8, 0xFF), (0, 1, 0x10), (1, 2, 0xFF), (2, 3, 0x10)])
def test_flipped_bytes_at_the_start_are_a_format_error_naming_the_file(
    lapa_file, tmp_path, start, stop, mask
):
    data = bytearray(lapa_file.read_bytes())
    data[start:stop] = bytes(b ^ mask for b in data[start:stop])
    (tmp_path / "flipped").write_bytes(data)
    with pytest.raises(CheckpointFormatError, match=rf"{re.escape(str(tmp_path / 'flipped'))}: record 0"):
        load_lapa_params(tmp_path / "flipped", debug_config())


def test_flipped_header_bytes_are_format_errors_naming_file_and_record(lapa_file, tmp_path):
    data = lapa_file.read_bytes()
    offsets = _record_offsets(data)
    path = tmp_path / "flipped"
    for record, byte, mask in FLIPS:
        flipped = bytearray(data)
        flipped[offsets[record] + byte] ^= mask
        path.write_bytes(flipped)
        where = re.escape(str(path))
        with pytest.raises(CheckpointFormatError, match=rf"{where}: (record {record}\b|truncated)"):
            list(iter_records(path))
