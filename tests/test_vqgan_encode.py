"""The pre-tokenizer: vision codes added to JSONL rows, batched over devices, resumable, clear errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from latent_pretraining.core.partial import PartialMismatchError
from latent_pretraining.episodes import load_image
from latent_pretraining.vqgan.encode import EncodeError, encode_jsonl
from latent_pretraining.vqgan.images import preprocess
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


def _killed_after(monkeypatch, batches: int):
    """Makes the encoder raise on its call number ``batches + 1`` (a run that dies there)."""
    from latent_pretraining.vqgan import encode as encode_module

    real, calls = encode_module.Encoder.__call__, []

    def dying(self, images):
        calls.append(1)
        if len(calls) > batches:
            raise KeyboardInterrupt("killed")
        return real(self, images)

    monkeypatch.setattr(encode_module.Encoder, "__call__", dying)
    return lambda: monkeypatch.setattr(encode_module.Encoder, "__call__", real)


def test_rerun_resumes_after_the_rows_already_written(model, rows, tmp_path, monkeypatch):
    encode_jsonl(model, rows, tmp_path / "clean.jsonl", batch_size=8)
    clean = (tmp_path / "clean.jsonl").read_text()
    revive = _killed_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8)
    revive()
    partial = tmp_path / "out.jsonl.partial"
    assert len(_read(partial)) == 8 and not (tmp_path / "out.jsonl").exists()
    with open(partial, "a") as f:
        f.write('{"id": 8, "ima')  # a line the killed run was writing when it died
    counts = encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8)
    assert counts["resumed_after"] == 8 and counts["encoded"] == 3
    assert (tmp_path / "out.jsonl").read_text() == clean
    assert not partial.exists() and not (tmp_path / "out.jsonl.partial.json").exists()


def test_resume_refuses_a_partial_of_other_options_unless_restarted(model, rows, tmp_path, monkeypatch):
    revive = _killed_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, mode="center_crop")
    revive()
    with pytest.raises(PartialMismatchError, match=r"mode: 'center_crop' -> 'resize'.*--restart"):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8)
    assert len(_read(tmp_path / "out.jsonl.partial")) == 8  # refused, and kept
    rows.write_text(rows.read_text() + "\n")  # the input changed (size and mtime)
    with pytest.raises(PartialMismatchError, match="input"):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, mode="center_crop")
    encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, restart=True)
    encode_jsonl(model, rows, tmp_path / "clean.jsonl", batch_size=8)
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "clean.jsonl").read_text()


def test_resume_refuses_a_partial_of_another_checkpoint(model, rows, tmp_path, monkeypatch):
    revive = _killed_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, model_source={"checkpoint": "a"})
    revive()
    with pytest.raises(PartialMismatchError, match=r"model.checkpoint: 'a' -> 'b'"):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, model_source={"checkpoint": "b"})


def test_a_partial_without_its_record_is_not_trusted(model, rows, tmp_path):
    (tmp_path / "out.jsonl.partial").write_text('{"id": 0, "vision": [1]}\n')  # from who knows where
    with pytest.raises(PartialMismatchError, match="no record of what produced it"):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8)
    counts = encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, restart=True)
    assert counts["encoded"] == 11 and len(_read(tmp_path / "out.jsonl")) == 11


def test_skip_errors_resume_continues_at_the_input_line(model, rows, tmp_path, monkeypatch):
    lines = rows.read_text().splitlines()
    lines[2] = json.dumps({"id": 2, "image": str(tmp_path / "missing.png")})
    rows.write_text("\n".join(lines) + "\n\n")  # and a trailing blank line, ignored
    revive = _killed_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, skip_errors=True)
    revive()
    counts = encode_jsonl(model, rows, tmp_path / "out.jsonl", batch_size=8, skip_errors=True)
    ids = [r["id"] for r in _read(tmp_path / "out.jsonl")]
    assert ids == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10]  # each row once: 10 rows, not 11
    assert counts["skipped_lines"] == [3]
    assert json.loads((tmp_path / "out.jsonl.skipped.json").read_text()) == [3]


def test_bad_rows_name_the_line(model, tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    good = json.dumps({"image": str(image)})
    cases = {
        b"5": "expected a JSON object, got int",
        b"null": "expected a JSON object, got NoneType",
        b'"a string"': "expected a JSON object, got str",
        b'{"image": 3}': "field 'image': expected a path string",
        b'{"image": "caf\xe9.png"}': "not UTF-8 text",
        b'{"image": "../outside.png"}': "outside the image root",
    }
    for k, (line, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{k}.jsonl"
        path.write_bytes(good.encode() + b"\n" + line + b"\n")
        with pytest.raises(EncodeError, match=rf"bad{k}.jsonl:2: .*{message}"):
            encode_jsonl(model, path, tmp_path / f"out{k}.jsonl", batch_size=8, image_root=tmp_path)


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
