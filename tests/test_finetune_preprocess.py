"""Action bins and LAPA's finetune preprocessing: bins that round-trip, validation, LAPA's schema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.finetune_preprocess import InvalidRowError, main, preprocess
from latent_pretraining.actions.bins import ActionBins


def _rows(n=500, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = [*rng.normal(0.0, 0.01, 6).tolist(), float(rng.integers(2))]
        a[3] = 0.25  # a constant dimension
        if i % 3 == 0:
            a[0] = 0.0  # a third of dx is exactly zero
        rows.append(
            {
                "id": f"ep_{i}",
                "image": f"/data/{i}.png",
                "extra": i,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat action should the robot take to `open it`"},
                    {"from": "gpt", "raw_actions": a, "states": {"q": [0.1]}},
                ],
            }
        )
    return rows


def _cli(tmp_path, *extra: str) -> list[str]:
    """Command line reading tmp_path/in.json and writing out.jsonl and bins.csv there."""
    return [
        "--input_path",
        str(tmp_path / "in.json"),
        "--output_filename",
        str(tmp_path / "out.jsonl"),
        "--csv_filename",
        str(tmp_path / "bins.csv"),
        *extra,
    ]


def test_every_dimension_keeps_its_bins_and_round_trips():
    actions = np.array([r["conversations"][1]["raw_actions"] for r in _rows()])
    bins = ActionBins.fit(actions, 64)
    assert bins.num_bins == [64] * 6 + [2]  # repeated values and the constant roll keep all 64 bins
    ids, clipped = bins.encode(actions)
    assert not clipped.any()
    error = np.abs(bins.decode(ids) - actions)
    half_width = np.array([np.diff(bins.edges[d])[ids[:, d]] / 2 for d in range(6)]).T
    assert (error[:, :6] <= half_width + 1e-12).all()
    assert error[:, 3].max() < 1e-5 and (error[:, 6] == 0).all()


def test_edges_are_left_closed_and_the_last_bin_closed():
    bins = ActionBins([np.array([0.0, 1.0, 2.0, 3.0]), np.array([-0.5, 0.5, 1.5])])
    ids, clipped = bins.encode(np.array([[1.0, 0.0], [3.0, 1.0], [-1.0, 0.4], [3.5, 0.6]]))
    assert ids[:, 0].tolist() == [1, 2, 0, 2]  # 1.0 opens bin 1; 3.0 is in the closed last bin
    assert clipped[:, 0].tolist() == [False, False, True, True]
    assert ids[:, 1].tolist() == [0, 1, 0, 1]  # gripper thresholded at 0.5, not int()-truncated
    np.testing.assert_allclose(bins.decode(np.array([[1, 1]])), [[1.5, 1.0]])
    with pytest.raises(ValueError, match="dimension 0: id 3 is not a bin"):
        bins.decode(np.array([[3, 0]]))
    allowed = bins.valid_ids(8)
    assert allowed.sum(axis=1).tolist() == [3, 2]


def test_uniform_bins_clip_the_tails_and_count_them():
    x = np.concatenate([np.linspace(-1, 1, 1000), [50.0]])[:, None]
    bins = ActionBins.fit(np.hstack([x, np.zeros_like(x)]), 16, scheme="uniform")
    _, clipped = bins.encode(np.hstack([x, np.zeros_like(x)]))
    assert 0 < clipped[:, 0].mean() < 0.05 and bins.edges[0][-1] < 2.0


def test_csv_round_trip_in_lapas_layout(tmp_path):
    bins = ActionBins.fit(np.random.default_rng(0).normal(size=(200, 7)) * [1, 1, 1, 1, 1, 1, 0], 8)
    bins.to_csv(tmp_path / "bins.csv")
    lines = (tmp_path / "bins.csv").read_text().splitlines()
    assert lines[0] == ",".join(str(i) for i in range(9)) and lines[-1].startswith("-0.5,0.5,1.5,,")
    again = ActionBins.from_csv(tmp_path / "bins.csv")
    for a, b in zip(bins.edges, again.edges, strict=True):
        np.testing.assert_array_equal(a, b)


def test_output_rows_follow_lapas_schema():
    rows = _rows(20)
    out, bins, meta = preprocess(rows, 16)
    first = out[0]
    assert list(first) == ["id", "image", "extra", "raw_actions", "action", "fields", "instruction"]
    assert first["raw_actions"] == rows[0]["conversations"][1]["raw_actions"]
    assert first["fields"] == "[instruction],[vision],action"
    assert first["instruction"] == (
        "<s> You are a helpful assistant. USER: What action should the robot take to `open it` ASSISTANT:"
    )
    assert first["action"] == bins.encode(np.array(first["raw_actions"]))[0].tolist()
    assert meta["bins_per_dimension"]["dx"] == 16 and meta["rows"] == 20


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r.pop("image"), "row 3 \\(id ep_3\\): missing field 'image'"),
        (
            lambda r: r["conversations"][1].pop("raw_actions"),
            "missing field 'conversations\\[1\\].raw_actions'",
        ),
        (lambda r: r["conversations"][1]["raw_actions"].pop(), "'raw_actions' has 6 values, expected 7"),
        (lambda r: r["conversations"][1]["raw_actions"].__setitem__(2, float("nan")), "dz is nan"),
        (
            lambda r: r["conversations"][1]["raw_actions"].__setitem__(6, 2.0),
            "gripper 2.0 is outside the '01'",
        ),
        (lambda r: r["conversations"][1]["raw_actions"].__setitem__(6, True), "gripper is True, expected a"),
        (lambda r: r["conversations"][1]["raw_actions"].__setitem__(0, "0.01"), "dx is '0.01', expected a"),
        (lambda r: r["conversations"][1]["raw_actions"].__setitem__(1, [0.1]), r"dy is \[0.1\], expected"),
        (lambda r: r["conversations"][1]["raw_actions"].__setitem__(2, None), "dz is None, expected a"),
    ],
)
def test_invalid_rows_name_the_row_and_field(mutate, message):
    rows = _rows(10)
    mutate(rows[3])
    with pytest.raises(InvalidRowError, match=message):
        preprocess(rows, 8)
    out, _, meta = preprocess(rows, 8, skip_invalid=True)
    assert len(out) == 9 and len(meta["skipped_rows"]) == 1 and "ep_3" in meta["skipped_rows"][0]


def test_cli_writes_all_outputs_or_nothing(tmp_path, capsys):
    rows = _rows(50)
    (tmp_path / "in.json").write_text(json.dumps(rows))
    args = _cli(tmp_path, "--discretize_bins", "32")
    main(args)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 50
    meta = json.loads((tmp_path / "bins.json").read_text())
    assert meta["bins_per_dimension"]["dyaw"] == 32 and "round_trip_max_abs_error" in meta["statistics"]["dx"]
    assert "mean |err|" in capsys.readouterr().out
    rows[7]["conversations"][1]["raw_actions"][0] = float("inf")
    (tmp_path / "in.json").write_text(json.dumps(rows).replace("Infinity", "1e999"))
    for name in ("out.jsonl", "bins.csv", "bins.json"):
        (tmp_path / name).unlink()
    with pytest.raises(SystemExit, match=r"row 7 \(id ep_7\).*dx is inf.*nothing was written"):
        main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]


def test_output_equals_lapas_on_a_small_input_field_by_field(tmp_path):
    """Hand-derived LAPA output: qcut(2 bins) of dx = [0, 1, 2, 3] has edges [0, 1.5, 3]; assign_bin gives
    0, 0, 1 and (x >= last edge) 1; every other dimension is constant per row set here."""
    rows = []
    for i, dx in enumerate([0.0, 1.0, 2.0, 3.0]):
        raw = [dx, dx, dx, dx, dx, dx, float(i % 2)]
        rows.append(
            {
                "id": f"r{i}",
                "image": f"/x/{i}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat action should the robot take to `wave`"},
                    {"from": "gpt", "raw_actions": raw},
                ],
            }
        )
    expected = [
        {
            "id": f"r{i}",
            "image": f"/x/{i}.jpg",
            "raw_actions": [dx] * 6 + [float(i % 2)],
            "action": [b] * 6 + [i % 2],
            "fields": "[instruction],[vision],action",
            "instruction": "<s> You are a helpful assistant. USER: What action should the robot take to "
            "`wave` ASSISTANT:",
        }
        for i, (dx, b) in enumerate(zip([0.0, 1.0, 2.0, 3.0], [0, 0, 1, 1], strict=True))
    ]
    (tmp_path / "in.json").write_text(json.dumps(rows))
    main(_cli(tmp_path, "--discretize_bins", "2"))
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e)  # same keys in LAPA's order
        assert g == e
    bins = ActionBins.from_csv(tmp_path / "bins.csv")
    np.testing.assert_allclose(bins.edges[0], [0.0, 1.5, 3.0])
    np.testing.assert_allclose(bins.edges[6], [-0.5, 0.5, 1.5])  # LAPA's gripper row


def test_unreadable_json_is_a_clear_error(tmp_path):
    (tmp_path / "in.json").write_text('[{"id": 1,')
    with pytest.raises(SystemExit, match=r"in\.json: unreadable JSON"):
        main(_cli(tmp_path))


def test_vqgan_checkpoint_adds_vision_tokens_in_the_same_run(tmp_path):
    from flax import nnx
    from PIL import Image

    from latent_pretraining.vqgan.images import preprocess as prep
    from latent_pretraining.vqgan.lwm_checkpoint import save_lwm_vqgan
    from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config

    cfg = get_vqgan_config("tiny")
    model = VQGAN(cfg, rngs=nnx.Rngs(0))
    save_lwm_vqgan(model, tmp_path / "vqgan")
    (tmp_path / "vqgan_config.json").write_text(cfg.to_json())
    rows = _rows(4)
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        row["image"] = f"{i}.png"
    (tmp_path / "in.json").write_text(json.dumps(rows))
    args = _cli(
        tmp_path,
        "--discretize_bins",
        "4",
        "--vqgan_checkpoint",
        str(tmp_path / "vqgan"),
        "--image_root",
        str(tmp_path),
    )
    main(args)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    image = np.asarray(Image.open(tmp_path / "2.png"))
    _, codes = model.encode(prep(image, 32)[None])
    assert out[2]["vision"] == np.asarray(codes).reshape(-1).tolist()
    rows[1]["image"] = "missing.png"
    (tmp_path / "in.json").write_text(json.dumps(rows))
    (tmp_path / "out.jsonl").unlink()
    with pytest.raises(SystemExit, match=r"row id ep_1: cannot read image .*missing\.png"):
        main(args)
    assert not (tmp_path / "out.jsonl").exists()


def _outputs(tmp_path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file()}


def test_no_output_may_overwrite_the_input_or_another_output(tmp_path):
    """LAPA's natural naming bridge.json -> bridge.jsonl + bridge.csv made the default metadata
    path (the CSV's with .json) the input itself."""
    (tmp_path / "bridge.json").write_text(json.dumps(_rows(20)))
    before = _outputs(tmp_path)
    args = [
        "--input_path",
        str(tmp_path / "bridge.json"),
        "--output_filename",
        str(tmp_path / "bridge.jsonl"),
    ]
    with pytest.raises(SystemExit, match=r"--metadata .*bridge.json is the same file as --input_path"):
        main([*args, "--csv_filename", str(tmp_path / "bridge.csv")])
    with pytest.raises(
        SystemExit, match=r"--csv_filename .*bridge.jsonl is the same file as --output_filename"
    ):
        main(
            [*args, "--csv_filename", str(tmp_path / "bridge.jsonl"), "--metadata", str(tmp_path / "m.json")]
        )
    (tmp_path / "link.json").symlink_to(tmp_path / "bridge.json")  # the same file under another name
    with pytest.raises(SystemExit, match=r"--metadata .*link.json is the same file as --input_path"):
        main([*args, "--csv_filename", str(tmp_path / "b.csv"), "--metadata", str(tmp_path / "link.json")])
    (tmp_path / "link.json").unlink()
    assert _outputs(tmp_path) == before  # the input untouched, nothing written


def test_a_failed_write_leaves_every_previous_output(tmp_path, monkeypatch):
    (tmp_path / "in.json").write_text(json.dumps(_rows(30)))
    main(_cli(tmp_path, "--discretize_bins", "8"))
    previous = _outputs(tmp_path)
    (tmp_path / "in.json").write_text(json.dumps(_rows(40, seed=1)))
    now = _outputs(tmp_path)
    # an output that is a directory is refused before anything is written
    with pytest.raises(SystemExit, match=r"--metadata .*meta is a directory"):
        (tmp_path / "meta").mkdir()
        main(_cli(tmp_path, "--metadata", str(tmp_path / "meta")))
    (tmp_path / "meta").rmdir()
    assert _outputs(tmp_path) == now
    # a rename that fails half-way: the outputs already moved are put back
    import data.finetune_preprocess as fp
    import latent_pretraining.core.files as files

    real, calls = files.os.replace, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # out.jsonl is in place and moving bins.csv into place fails
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(SystemExit, match="No space left on device"):
        fp.main(_cli(tmp_path, "--discretize_bins", "8"))
    monkeypatch.undo()
    assert _outputs(tmp_path) == now  # old outputs back, no temporary files left
    assert {k: v for k, v in now.items() if k != "in.json"} == {
        k: v for k, v in previous.items() if k != "in.json"
    }


@pytest.mark.parametrize(
    "content,message",
    [
        (b"[]", "holds no rows"),
        (b'{"id": 1}', "expected a JSON array of rows, got dict"),
        (b'[5, {"id": 2}]', r"row 0 \(id #0\): expected an object, got int"),
        (b"[null]", "row 0 .*expected an object, got NoneType"),
        (b'["a string"]', "row 0 .*expected an object, got str"),
        (b'[{"id": "caf\xe9"}]', "not UTF-8 text"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "in.json").write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        main(_cli(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]


def _odd_rows() -> list[dict]:
    """Rows that the fast paths must write exactly as json.dumps: several key layouts, strings to
    escape, values that are not strings, a question that is not one, and raw actions whose repr
    differs from orjson's (|x| < 1e-4, >= 1e16) or that are ints."""
    values = [1e-5, 3e-7, 1e-4, 9.99e-6, 0.0, -0.0, 1e16, 7, -2, 0.0001234, 10.00001, 5e-324, 0.25]
    rows = _rows(60)
    for i, row in enumerate(rows):
        raw = row["conversations"][1]["raw_actions"]
        raw[:6] = [values[(3 * i + d) % len(values)] for d in range(6)]
        raw[6] = i % 2  # an int gripper stays an int
        row["id"] = ["é", "日本", "😀", 'q"u\\o\n\x01', "50%"][i % 5] + str(i)
        if i % 4 == 0:
            rows[i] = row = {"conversations": row.pop("conversations"), **row, '%k"e': {"n": [1.5, None]}}
        if i % 9 == 0:
            row["fields"] = "kept in place"
        if i == 5:
            row["conversations"][0]["value"] = ["not", "a string"]
    return rows


@pytest.mark.parametrize("parser", ["orjson", "json", "orjson reading, str() writing the numbers"])
def test_jsonl_is_what_json_dumps_writes(tmp_path, monkeypatch, parser):
    import data.finetune_preprocess as fp

    if parser == "json":
        monkeypatch.setattr(fp, "orjson", None)
    if parser.startswith("orjson reading"):  # as where orjson's numbers fail the probe
        monkeypatch.setattr(fp, "_orjson_as_repr", [False])
    rows = _odd_rows()
    (tmp_path / "in.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    main(_cli(tmp_path, "--discretize_bins", "8"))
    out, _, _ = preprocess(rows, 8)
    assert (tmp_path / "out.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in out)


def test_what_orjson_reads_otherwise_is_read_by_json(tmp_path):
    """Integers outside 64 bits (orjson: floats), NaN outside the actions (orjson: refused) and
    a message naming an invalid row: as json reads the file."""
    rows = _rows(20)
    rows[2]["extra"] = 10**30
    rows[3]["extra"] = float("nan")
    rows[4]["conversations"][1]["raw_actions"][0] = -(10**20)
    (tmp_path / "in.json").write_text(json.dumps(rows))
    main(_cli(tmp_path, "--discretize_bins", "4"))
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert '"extra": 1000000000000000000000000000000,' in lines[2] and '"extra": NaN,' in lines[3]
    assert '"raw_actions": [-100000000000000000000, ' in lines[4]
    rows[6]["id"] = 10**25
    rows[6]["conversations"][1]["raw_actions"][6] = 5.0
    (tmp_path / "in.json").write_text(json.dumps(rows))
    with pytest.raises(SystemExit, match=r"row 6 \(id 10000000000000000000000000\): gripper 5.0"):
        main(_cli(tmp_path))


def test_a_pipe_is_read_once_even_where_json_reads_it_again(tmp_path):
    import os
    import threading

    rows = _rows(10)
    rows[1]["extra"] = float("nan")  # orjson refuses NaN: json reads the rows again
    os.mkfifo(tmp_path / "in.json")
    writer = threading.Thread(target=(tmp_path / "in.json").write_text, args=(json.dumps(rows),))
    writer.start()
    main(_cli(tmp_path, "--discretize_bins", "4"))
    writer.join()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 10 and '"extra": NaN,' in lines[1]


@pytest.mark.parametrize("orjson_numbers", [True, False])
@pytest.mark.parametrize(
    "value,message", [(True, "gripper is True"), ("0.5", "dx is '0.5'"), (None, "dy is None")]
)
def test_a_raw_action_that_is_not_a_number_is_named_from_the_command_line(
    tmp_path, monkeypatch, value, message, orjson_numbers
):
    """orjson's run leaves the type check of the numbers to the writing of the JSONL: a failure there
    is json's run's message, and the outputs already there stay."""
    import data.finetune_preprocess as fp

    monkeypatch.setattr(fp, "_orjson_as_repr", [orjson_numbers])
    (tmp_path / "in.json").write_text(json.dumps(_rows(30)))
    main(_cli(tmp_path, "--discretize_bins", "4"))
    before = _outputs(tmp_path)
    rows = _rows(3000)
    rows[2500]["conversations"][1]["raw_actions"][{True: 6, "0.5": 0, None: 1}[value]] = value
    (tmp_path / "in.json").write_text(json.dumps(rows))
    with pytest.raises(
        SystemExit, match=rf"row 2500 \(id ep_2500\): 'raw_actions' {message}, expected a number"
    ):
        main(_cli(tmp_path, "--discretize_bins", "4"))
    after = _outputs(tmp_path)
    assert after.pop("in.json") != before.pop("in.json") and after == before
