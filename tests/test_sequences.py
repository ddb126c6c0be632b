"""Sequences built exactly as LAPA builds them, checked against layouts written out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from latent_pretraining.model import Modality
from latent_pretraining.sequences import RowError, SequenceBuilder, SequenceConfig, TextTokenizer

T, V, L, A = Modality.TEXT, Modality.VISION, Modality.LATENT, Modality.ACTION
CONFIG = SequenceConfig(
    tokens_per_frame=4, tokens_per_latent=4, tokens_per_action=7, vocab_sizes=(160, 8448, 8, 32)
)


@pytest.fixture(scope="module")
def tok(sp_model):
    return TextTokenizer(sp_model)


def test_latent_pretraining_row_layout(tok):
    sp = tok.sp
    row = {
        "instruction": "push the green triangle",
        "vision": [5, 6, 7, 8],
        "delta": ["3", "0", "7", "1"],
        "fields": "[instruction],[vision],delta",
    }
    ex = SequenceBuilder(tok, CONFIG)(row)
    # written out by hand from LAPA's DeltaVisionTextProcessor: each piece is its own encode() call
    instruction = sp.encode("push the green triangle")
    v_open, v_close = sp.encode("<vision>"), sp.encode("</vision>")
    d_open, d_close = sp.encode("<delta>"), sp.encode("</delta>")
    assert sp.id_to_piece(v_open[0]).startswith("\u2581")  # SentencePiece's leading space on every marker
    expected = [
        (1, T, 0),
        *[(t, T, 0) for t in instruction],
        *[(t, T, 0) for t in v_open],
        (5, V, 0),
        (6, V, 0),
        (7, V, 0),
        (8, V, 0),
        (8193, V, 0),
        *[(t, T, 0) for t in v_close],
        *[(t, T, 1) for t in d_open],
        (3, L, 1),
        (0, L, 1),
        (7, L, 1),
        (1, L, 1),
        *[(t, T, 1) for t in d_close],
        (2, T, 1),
    ]
    assert ex.ids.tolist() == [e[0] for e in expected]
    assert ex.modality.tolist() == [int(e[1]) for e in expected]
    assert ex.loss_mask.tolist() == [float(e[2]) for e in expected]


def test_finetune_row_with_two_frames_and_actions(tok):
    row = {
        "instruction": "pick up the red cube",
        "vision": list(range(8)),
        "action": [1, 2, 3, 4, 5, 6, 0],
        "fields": "[instruction],[vision],action",
    }
    ex = SequenceBuilder(tok, CONFIG)(row)
    vision = ex.ids[ex.modality == V].tolist()
    assert vision == [0, 1, 2, 3, 8192, 4, 5, 6, 7, 8193]  # 8192 ends a frame, 8193 the vision span
    assert ex.ids[ex.modality == A].tolist() == [1, 2, 3, 4, 5, 6, 0]
    assert (ex.loss_mask[ex.modality == A] == 1).all() and (ex.loss_mask[ex.modality == V] == 0).all()
    assert ex.ids[-1] == 2 and ex.loss_mask[-1] == 1 and ex.ids[0] == 1 and ex.loss_mask[0] == 0


def test_joined_text_fields_and_explicit_bos_eos(tok):
    row = {"a": "pick up", "b": "the cube", "fields": "a+b,<|eos|>"}
    ex = SequenceBuilder(tok, CONFIG)(row)
    assert ex.ids.tolist() == [1, *tok.encode("pick up the cube"), 2, 2]


@pytest.mark.parametrize(
    "row,message",
    [
        ({"vision": [1, 2, 3, 4]}, "missing field 'fields'"),
        ({"fields": "[instruction],delta", "delta": [1, 2, 3, 4]}, "missing field 'instruction'"),
        ({"fields": "delta", "delta": [1, 2, 3]}, "3 ids, expected 4"),
        ({"fields": "delta", "delta": [1, 2, 3, 8]}, r"id 8 is outside the latent vocabulary \[0, 8\)"),
        ({"fields": "delta", "delta": ["a", 1, 2, 3]}, "ids must be integers"),
        ({"fields": "delta", "delta": [3.7, 1, 2, 3]}, "ids must be integers, got 3.7"),  # not int(3.7) == 3
        ({"fields": "delta", "delta": ["3.7", 1, 2, 3]}, "ids must be integers, got '3.7'"),
        ({"fields": "delta", "delta": [True, 1, 2, 3]}, "ids must be integers, got True"),
        ({"fields": "delta", "delta": [[1], 1, 2, 3]}, r"ids must be integers, got \[1\]"),
        ({"fields": "action", "action": [1, 2, None, 4, 5, 6, 7]}, "ids must be integers, got None"),
        ({"fields": "[vision]", "vision": [1, 2, 3, 8193]}, "id 8193 is not an image code"),
        ({"fields": "[vision]", "vision": [1, 2, 3, 8192]}, "id 8192 is not an image code"),
        ({"fields": "[vision]", "vision": [1, 2, 3]}, "3 vision tokens, expected a multiple of 4"),
        ({"fields": "[vision]", "vision": [1, 2, 3, 8448]}, "id 8448 is outside the vision vocabulary"),
        ({"fields": "action", "action": 5}, "expected a list of ids"),
    ],
)
def test_bad_rows_name_the_field(tok, row, message):
    with pytest.raises(RowError, match=message):
        SequenceBuilder(tok, CONFIG)(row)


def test_ids_as_lapa_writes_them_are_read_exactly(tok):
    row = {"fields": "delta", "delta": ["3", 0, 7.0, " 1"]}  # LAPA writes strings; 7.0 is integral
    ex = SequenceBuilder(tok, CONFIG)(row)
    assert ex.ids[ex.modality == 2].tolist() == [3, 0, 7, 1]


def test_rows_that_are_not_objects_and_codes_beyond_the_codebook(tok):
    for row in (5, None, "a string", [1, 2]):
        with pytest.raises(RowError, match="expected a JSON object"):
            SequenceBuilder(tok, CONFIG)(row)
    small_codebook = dataclasses.replace(CONFIG, vision_codes=64)
    with pytest.raises(RowError, match=r"id 64 is not an image code \(the VQGAN's codes are 0..63"):
        SequenceBuilder(tok, small_codebook)({"fields": "[vision]", "vision": [1, 2, 3, 64]})


def test_a_vision_vocabulary_without_the_end_of_vision_id_is_an_error(tok):
    small = SequenceConfig(tokens_per_frame=4, vocab_sizes=(160, 96, 8, 32))
    with pytest.raises(RowError, match="vision vocabulary \\(96\\) has no end-of-vision id 8193"):
        SequenceBuilder(tok, small)({"fields": "[vision]", "vision": [1, 2, 3, 4]})


def test_tokenizer_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer(tmp_path / "nope.model")


def test_demo_tokenizer_trains_from_jsonl_or_finetune_json(tmp_path):
    import json

    from data.train_text_tokenizer import instructions, train

    rows = [{"instruction": f"push the {c} cube to the left"} for c in ("red", "green", "blue")] * 10
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    finetune = [{"conversations": [{"value": "<image>\nWhat action should the robot take to `open it`"}, {}]}]
    (tmp_path / "ft.json").write_text(json.dumps(finetune))
    assert instructions(tmp_path / "ft.json", "instruction") == [
        "What action should the robot take to `open it`"
    ]
    model = train(instructions(tmp_path / "rows.jsonl", "instruction"), tmp_path / "tok.model", 120)
    tok = TextTokenizer(model)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.decode(tok.encode("push the green cube")) == "push the green cube"
