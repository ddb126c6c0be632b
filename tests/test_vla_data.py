"""VLA JSONL data: shifts, padding, packing, and errors that name the file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import write_latent_jsonl

from latent_pretraining.core.batches import host_rows
from latent_pretraining.sequences import RowError, SequenceBuilder, SequenceConfig, TextTokenizer
from latent_pretraining.vla_data import (
    augmenting_refresh,
    batch_stream,
    collate,
    eval_batches,
    load_examples,
    pack,
)

CONFIG = SequenceConfig(tokens_per_frame=16, vocab_sizes=(1024, 8448, 8, 256))


@pytest.fixture(scope="module")
def builder(sp_model):
    return SequenceBuilder(TextTokenizer(sp_model), CONFIG)


def test_collate_shifts_and_pads(builder, tmp_path):
    write_latent_jsonl(tmp_path / "d.jsonl", 2)
    data = load_examples([tmp_path / "d.jsonl"], builder, 96)
    ex = data.examples[0]
    n = len(ex) - 1
    batch = collate([[ex]], 96)
    np.testing.assert_array_equal(batch["inputs"][0, :n], ex.ids[:-1])
    np.testing.assert_array_equal(batch["targets"][0, :n], ex.ids[1:])
    np.testing.assert_array_equal(batch["target_modality"][0, :n], ex.modality[1:])
    np.testing.assert_array_equal(batch["target_weight"][0, :n], ex.loss_mask[1:])
    assert (batch["segment_ids"][0, :n] == 1).all() and (batch["segment_ids"][0, n:] == 0).all()
    assert (batch["target_weight"][0, n:] == 0).all()
    np.testing.assert_array_equal(batch["positions"][0, :n], np.arange(n))


def test_packing_isolates_examples(builder, tmp_path):
    write_latent_jsonl(tmp_path / "d.jsonl", 6)
    data = load_examples([tmp_path / "d.jsonl"], builder, 200)
    lengths = [len(e) for e in data.examples]
    rows = pack(lengths, 200, seed=0)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] - 1 for i in row) <= 200 for row in rows) and len(rows) < 6
    batch = collate([[data.examples[i] for i in rows[0]]], 200)
    segments = batch["segment_ids"][0]
    assert segments.max() == len(rows[0])
    second = segments == 2
    np.testing.assert_array_equal(batch["positions"][0][second], np.arange(second.sum()))  # restart
    stream = batch_stream(data, 1, 200, packing=True, seed=0)
    assert stream.num_rows == len(rows)


def test_evaluation_covers_every_row_once_the_last_batch_padded(builder, tmp_path):
    write_latent_jsonl(tmp_path / "d.jsonl", 5)
    data = load_examples([tmp_path / "d.jsonl"], builder, 96)
    batches = list(eval_batches(data, 4, 96))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, -1, -1, -1]]
    arrays, _ = batches[1]
    assert set(arrays) == {
        "inputs",
        "modality",
        "targets",
        "target_modality",
        "target_weight",
        "segment_ids",
        "positions",
    }
    np.testing.assert_array_equal(arrays["inputs"][0, : len(data.examples[4]) - 1], data.examples[4].ids[:-1])
    assert (arrays["segment_ids"][1:] == 0).all() and (arrays["target_weight"][1:] == 0).all()
    # fewer held-out rows than a batch: one padded batch, not "rows make no batch"
    assert [b[1].tolist() for b in eval_batches(data, 8, 96)] == [[0, 1, 2, 3, 4, -1, -1, -1]]
    # two hosts: disjoint shares and the same number of batches
    from unittest import mock

    shares = []
    for host in (0, 1):
        with (
            mock.patch("jax.process_count", return_value=2),
            mock.patch("jax.process_index", return_value=host),
        ):
            shares.append([b[1].tolist() for b in eval_batches(data, 2, 96)])
    assert shares == [[[0, 2], [4, -1]], [[1, 3], [-1, -1]]]  # host 1 runs the padded step too


def test_errors_name_the_file_and_line(builder, tmp_path):
    write_latent_jsonl(tmp_path / "d.jsonl", 4)
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    bad["delta"] = ["1", "2", "9", "3"]
    lines[2] = json.dumps(bad)
    lines[1] = "{not json"
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RowError, match=r"d.jsonl:2: invalid JSON"):
        load_examples([tmp_path / "d.jsonl"], builder, 96)
    lines[1] = lines[0]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RowError, match=r"d.jsonl:3: field 'delta': id 9 is outside the latent vocabulary"):
        load_examples([tmp_path / "d.jsonl"], builder, 96)
    lines[1] = "{not json"
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    data = load_examples([tmp_path / "d.jsonl"], builder, 96, skip_invalid=True)
    assert len(data.examples) == 2 and len(data.skipped) == 2
    assert (
        data.skipped[0].endswith("d.jsonl:2: invalid JSON") and "d.jsonl:3: field 'delta'" in data.skipped[1]
    )
    write_latent_jsonl(tmp_path / "ok.jsonl", 1)
    with pytest.raises(RowError, match=r"ok.jsonl:1: \d+ tokens do not fit max_length 20"):
        load_examples([tmp_path / "ok.jsonl"], builder, 20)
    for k, (line, message) in enumerate(
        [
            (b"5", "expected a JSON object, got int"),
            (b"null", "expected a JSON object, got NoneType"),
            (b'"text"', "expected a JSON object, got str"),
            (b'{"fields": "delta", "delta": ["\xff"]}', "not UTF-8 text"),
        ]
    ):
        path = tmp_path / f"bad{k}.jsonl"
        path.write_bytes(lines[0].encode() + b"\n" + line + b"\n")
        with pytest.raises(RowError, match=rf"bad{k}.jsonl:2: {message}"):
            load_examples([path], builder, 96)


def test_rows_without_vision_tokens_are_encoded_by_the_vqgan(sp_model, tmp_path):
    from flax import nnx
    from PIL import Image

    from latent_pretraining.vla_data import ImageTokens
    from latent_pretraining.vqgan.encode import load_row_encoder
    from latent_pretraining.vqgan.lwm_checkpoint import save_lwm_vqgan
    from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config

    cfg = get_vqgan_config("tiny")
    model = VQGAN(cfg, rngs=nnx.Rngs(0))
    save_lwm_vqgan(model, tmp_path / "vqgan")
    (tmp_path / "vqgan_config.json").write_text(cfg.to_json())
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(
            json.dumps(
                {
                    "image": f"{i}.png",
                    "instruction": "push the cube",
                    "delta": [1, 2, 3, 4],
                    "fields": "[instruction],[vision],delta",
                }
            )
        )
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    builder = SequenceBuilder(TextTokenizer(sp_model), SequenceConfig(tokens_per_frame=64))
    encoder = ImageTokens(load_row_encoder(tmp_path / "vqgan", None, image_root=tmp_path))
    data = load_examples([tmp_path / "rows.jsonl"], builder, 200, images=encoder)
    from latent_pretraining.episodes import load_image
    from latent_pretraining.vqgan.images import preprocess

    _, codes = model.encode(preprocess(load_image(tmp_path / "1.png"), 32)[None])
    assert data.rows[1]["vision"] == np.asarray(codes).reshape(-1).tolist()
    assert (data.examples[1].modality == 1).sum() == 65  # 64 codes + the end-of-vision id
    lines[2] = lines[2].replace('"2.png"', '"missing.png"')
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RowError, match=r"rows.jsonl:3: cannot read image .*missing.png"):
        load_examples([tmp_path / "rows.jsonl"], builder, 200, images=encoder)
    kept = load_examples([tmp_path / "rows.jsonl"], builder, 200, skip_invalid=True, images=encoder)
    assert len(kept.examples) == 2 and "rows.jsonl:3: cannot read image" in kept.skipped[0]
    (tmp_path / "inner").mkdir()
    escaping = ImageTokens(load_row_encoder(tmp_path / "vqgan", None, image_root=tmp_path / "inner"))
    lines[0] = lines[0].replace('"0.png"', '"../0.png"')
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RowError, match=r"rows.jsonl:1: image path '../0.png' lies outside the image root"):
        load_examples([tmp_path / "rows.jsonl"], builder, 200, images=escaping)
    lines[0] = lines[0].replace('"../0.png"', '"0.png"')
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")

    # with the training augmentation, image rows get a new draw every epoch (and the same draw on a rerun)
    augmenting = ImageTokens(encoder.encoder, "augment", seed=0)
    data = load_examples([tmp_path / "rows.jsonl"], builder, 200, skip_invalid=True, images=augmenting)
    assert data.from_images == {0, 1}

    def epochs(stream):  # 2 rows, batch 1: one epoch is 2 batches; key each by its row of the shuffle
        epoch = stream.epoch
        return {int(i): next(stream)["inputs"][0].tolist() for i in host_rows(2, 0, epoch)}

    refresh = augmenting_refresh(data, builder, augmenting)
    first = epochs(batch_stream(data, 1, 200, False, 0, refresh))
    second = epochs(batch_stream(data, 1, 200, False, 0, refresh))
    assert first == second
    stream = batch_stream(data, 1, 200, False, 0, refresh)
    epoch0, epoch1 = epochs(stream), epochs(stream)
    assert epoch0.keys() == epoch1.keys() == {0, 1}
    assert all(epoch0[i] != epoch1[i] for i in (0, 1))  # the same row, a new augmentation

    # held-out rows of an augmented run get the deterministic centre crop, the same on every load
    held_out = ImageTokens(encoder.encoder, "center_crop", seed=0)
    a = load_examples([tmp_path / "rows.jsonl"], builder, 200, skip_invalid=True, images=held_out)
    b = load_examples([tmp_path / "rows.jsonl"], builder, 200, skip_invalid=True, images=held_out)
    _, crop_codes = model.encode(preprocess(load_image(tmp_path / "1.png"), 32, "center_crop")[None])
    assert a.rows[1]["vision"] == b.rows[1]["vision"] == np.asarray(crop_codes).reshape(-1).tolist()
