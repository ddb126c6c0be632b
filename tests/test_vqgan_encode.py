"""The pre-tokenizer: vision codes added to JSONL rows, batched over devices, resumable, clear errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from latent_pretraining.vqgan.encode import EncodeError, encode_jsonl
from latent_pretraining.vqgan.images import load_image, preprocess
from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config


@pytest.fixture(scope="module")
def model():
    return VQGAN(get_vqgan_config("tiny"), rngs=nnx.Rngs(0))


@pytest.fixture()
def rows(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(11):
        path = tmp_path / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
        lines.append(json.dumps({"id": i, "image": str(path), "instruction": f"task {i}"}))
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "rows.jsonl"


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_get_the_models_codes(model, rows, tmp_path, eight_devices):
    counts = encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=4)  # 8 devices: padded to 8
    out = _read(tmp_path / "out.jsonl")
    assert counts["encoded"] == 11 and len(out) == 11
    assert out[3]["instruction"] == "task 3" and len(out[3]["vision"]) == 64
    image = preprocess(load_image(out[3]["image"]), 32)
    _, codes = model.encode(jnp.asarray(image)[None])
    assert out[3]["vision"] == np.asarray(codes).reshape(-1).tolist()  # row-major, as LAPA flattens
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_rerun_resumes_after_the_rows_already_written(model, rows, tmp_path):
    encode_jsonl(model, rows, tmp_path / "clean.jsonl", batch_size=4)
    clean = (tmp_path / "clean.jsonl").read_text()
    lines = clean.splitlines(keepends=True)
    (tmp_path / "out.jsonl.partial").write_text("".join(lines[:5]) + lines[5][:20])  # died mid-line
    counts = encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=4)
    assert counts["resumed_after"] == 5 and counts["encoded"] == 6
    assert (tmp_path / "out.jsonl").read_text() == clean


def test_unreadable_image_names_the_line_and_keeps_finished_work(model, rows, tmp_path):
    lines = rows.read_text().splitlines()
    lines[6] = json.dumps({"id": 6, "image": str(tmp_path / "missing.png")})
    rows.write_text("\n".join(lines) + "\n")
    with pytest.raises(EncodeError, match=r"rows.jsonl:7: cannot read image .*missing.png"):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=4)
    assert not (tmp_path / "out.jsonl").exists()  # nothing that looks complete
    assert len(_read(tmp_path / "out.jsonl.partial")) == 6  # the rows before it are kept for a resume
    counts = encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=4, skip_errors=True)
    assert counts["skipped"] == 1 and counts["skipped_lines"] == [7]
    assert [r["id"] for r in _read(tmp_path / "out.jsonl")] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert json.loads((tmp_path / "out.jsonl.skipped.json").read_text()) == [7]


def test_shards_split_the_rows(model, rows, tmp_path):
    for i in range(3):
        encode_jsonl(model, rows, tmp_path / f"part{i}.jsonl", batch_size=4, shard=(i, 3))
    ids = sorted(r["id"] for i in range(3) for r in _read(tmp_path / f"part{i}.jsonl"))
    assert ids == list(range(11))
    assert [r["id"] for r in _read(tmp_path / "part1.jsonl")] == [1, 4, 7, 10]
