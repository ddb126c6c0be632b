"""True-action codes for the upper-bound arm: the LAM's rows, their delta made from the actions."""

from __future__ import annotations

import json

import pytest

from data import action_codes


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _frame(episode, t, actions=None):
    row = {"episode_id": episode, "t": t, "image": f"/d/{episode}/{t:03d}.png"}
    if actions is not None:
        row["raw_actions"] = actions
    return row


def _act(dx, dy, dz, dyaw):
    return [dx, dy, dz, 0.0, 0.0, dyaw, 1.0]


@pytest.fixture
def inputs(tmp_path):
    # episode a: three frames (two actions); episode b: two frames (one action)
    frames = [
        _frame("a", 0, _act(-0.04, 0.0, 0.04, 0.2)),
        _frame("a", 1, _act(0.04, 0.04, 0.0, -0.2)),
        _frame("a", 2),
        _frame("b", 0, _act(0.0, -0.04, -0.04, 0.0)),
        _frame("b", 1),
    ]
    latent = [
        {"image": f["image"], "instruction": "x", "delta": ["7", "7", "7", "7"], "vision": [t], "fields": "f"}
        for t, f in enumerate(frames)
    ]
    return _write(tmp_path / "frames.jsonl", frames), _write(tmp_path / "latent.jsonl", latent)


def test_offset_one_bins_each_frames_own_action(tmp_path, inputs):
    frames, latent = inputs
    out = tmp_path / "true.jsonl"
    action_codes.main(["--latent", str(latent), "--frames", str(frames), "--out", str(out), "--codes", "4"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # per dimension, 4 bins of equal width between its min and max over the five pairs:
    # dx in [-0.04, 0.04] (width 0.02): -0.04 -> 0, 0.04 -> 3, 0 -> 2 (the last frames' zero too)
    assert [r["delta"] for r in rows] == [
        ["0", "2", "3", "3"],
        ["3", "3", "2", "0"],
        ["2", "2", "2", "2"],
        ["2", "0", "0", "2"],
        ["2", "2", "2", "2"],
    ]
    assert [r["vision"] for r in rows] == [[0], [1], [2], [3], [4]]  # everything else unchanged
    assert rows[0]["instruction"] == "x" and rows[0]["fields"] == "f"


def test_offset_two_sums_the_actions_up_to_the_episodes_end(inputs):
    frames, _ = inputs
    pairs = action_codes.pair_actions(frames, offset=2)
    assert pairs["/d/a/000.png"].tolist() == pytest.approx([0.0, 0.04, 0.04, 0.0])
    assert pairs["/d/a/001.png"].tolist() == pytest.approx([0.04, 0.04, 0.0, -0.2])  # clamped at the end
    assert pairs["/d/a/002.png"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert pairs["/d/b/000.png"].tolist() == pytest.approx([0.0, -0.04, -0.04, 0.0])


def test_a_row_without_its_frame_or_a_frame_without_actions_is_named(tmp_path, inputs):
    frames, latent = inputs
    out = tmp_path / "true.jsonl"
    stray = _write(tmp_path / "stray.jsonl", [{"image": "/d/c/000.png", "delta": ["0"] * 4}])
    with pytest.raises(SystemExit, match=r"stray.jsonl:1: image '/d/c/000.png' is not a frame"):
        action_codes.main(["--latent", str(stray), "--frames", str(frames), "--out", str(out)])
    holes = _write(tmp_path / "holes.jsonl", [_frame("a", 0), _frame("a", 1)])
    with pytest.raises(SystemExit, match=r"episode 'a' frame 0 has no 'raw_actions'"):
        action_codes.main(["--latent", str(latent), "--frames", str(holes), "--out", str(out)])
    assert not out.exists()


def test_a_relative_image_path_matches_the_same_frame_written_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "videos" / "e" / "000.png"
    frames = _write(
        tmp_path / "frames.jsonl",
        [
            {"episode_id": "e", "t": 0, "image": str(image), "raw_actions": _act(0.1, 0, 0, 0)},
            {"episode_id": "e", "t": 1, "image": str(image.with_name("001.png"))},
        ],
    )
    latent = _write(
        tmp_path / "latent.jsonl", [{"image": "videos/e/000.png"}, {"image": "./videos/e/001.png"}]
    )
    lines = action_codes.relabel(latent, frames, offset=1, codes=2)
    assert [json.loads(line)["delta"][0] for line in lines] == ["1", "0"]
    assert json.loads(lines[0])["image"] == "videos/e/000.png"  # written as it was read
