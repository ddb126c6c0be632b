"""Tabletop dataset writers: every format reads back with the episodes that were simulated."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data.make_tabletop import make_dataset, run_episode
from sim.env import EnvConfig, TabletopEnv

EPISODES = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tabletop"
    summary = make_dataset(out, EPISODES, EnvConfig(image_size=32), seed=10, noise=0.1)
    env = TabletopEnv(EnvConfig(image_size=32))
    tasks = ("pick_place", "push", "reach")
    expected = [run_episode(env, 10 + i, tasks[i % 3], 0.1) for i in range(EPISODES)]
    return out, summary, expected


def test_summary_counts(dataset):
    out, summary, expected = dataset
    assert summary["episodes"] == EPISODES
    assert summary["frames"] == sum(len(e["frames"]) for e in expected)
    assert summary["expert_success_rate"] == np.mean([e["success"] for e in expected])
    assert summary["disk_bytes"] > 0
    assert json.loads((out / "summary.json").read_text())["frames"] == summary["frames"]
    assert not list(out.parent.glob(".tabletop.tmp-*"))


def test_video_folders_hold_the_simulated_frames(dataset):
    out, _, expected = dataset
    index = json.loads((out / "videos" / "index.json").read_text())
    assert [e["episode_id"] for e in index["episodes"]] == [e["episode_id"] for e in expected]
    for entry, episode in zip(index["episodes"], expected, strict=True):
        assert entry["instruction"] == episode["instruction"] and entry["num_frames"] == len(
            episode["frames"]
        )
        for t in (0, len(episode["frames"]) - 1):
            frame = np.asarray(Image.open(out / "videos" / entry["frames_dir"] / f"{t:03d}.png"))
            np.testing.assert_array_equal(frame, episode["frames"][t])


def test_frames_jsonl_lists_every_frame_in_order(dataset):
    out, _, expected = dataset
    rows = [json.loads(line) for line in (out / "videos" / "frames.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(e["frames"]) for e in expected)
    first = expected[1]
    mine = [r for r in rows if r["episode_id"] == first["episode_id"]]
    assert [r["t"] for r in mine] == list(range(len(first["frames"])))
    assert mine[0]["instruction"] == first["instruction"]
    for row in mine[:-1]:  # the action taken at each frame; the last frame has none
        np.testing.assert_array_equal(row["raw_actions"], first["actions"][row["t"]])
    assert "raw_actions" not in mine[-1] and len(mine[0]["raw_actions"]) == 7
    np.testing.assert_array_equal(np.asarray(Image.open(mine[-1]["image"])), first["frames"][-1])


def test_rlds_loads_with_tensorflow_datasets(dataset):
    import tensorflow_datasets as tfds

    out, _, expected = dataset
    builder = tfds.builder_from_directory(str(out / "rlds" / "tabletop" / "1.0.0"))
    by_id = {e["episode_id"]: e for e in expected}
    seen = 0
    for example in tfds.as_numpy(builder.as_dataset(split="train")):
        episode = by_id[example["episode_metadata"]["episode_id"].decode()]
        steps = list(example["steps"])
        assert len(steps) == len(episode["actions"]) + 1
        assert steps[0]["is_first"] and steps[-1]["is_last"] and not steps[-2]["is_last"]
        assert bool(steps[-1]["is_terminal"]) == episode["success"]
        assert steps[0]["language_instruction"].decode() == episode["instruction"]
        for t in (0, len(steps) // 2):
            np.testing.assert_array_equal(steps[t]["observation"]["image"], episode["frames"][t])
            np.testing.assert_allclose(steps[t]["action"], episode["actions"][t], rtol=1e-6)
            np.testing.assert_allclose(steps[t]["observation"]["state"], episode["states"][t], rtol=1e-6)
        seen += 1
    assert seen == EPISODES


def test_finetune_json_is_lapa_format(dataset):
    out, _, expected = dataset
    rows = json.loads((out / "finetune.json").read_text())
    successful = [e for e in expected if e["success"]]
    assert len(rows) == sum(len(e["actions"]) for e in successful)
    first = rows[0]
    assert set(first) == {"id", "image", "conversations"}
    human, gpt = first["conversations"]
    assert human["from"] == "human"
    assert human["value"] == f"<image>\nWhat action should the robot take to `{successful[0]['instruction']}`"
    assert gpt["from"] == "gpt" and len(gpt["raw_actions"]) == 7 and gpt["raw_actions"][6] in (0.0, 1.0)
    np.testing.assert_array_equal(gpt["raw_actions"], successful[0]["actions"][0])
    assert set(gpt["states"]) == {"eef_pos", "eef_yaw", "gripper_closed"}
    image = np.asarray(Image.open(first["image"]))  # absolute path into the finished dataset
    np.testing.assert_array_equal(image, successful[0]["frames"][0])


def test_existing_output_is_kept_unless_overwrite(dataset, tmp_path):
    out, _, _ = dataset
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_dataset(out, 1, EnvConfig(image_size=32))


def test_a_run_that_dies_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = run_episode

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr("data.make_tabletop.run_episode", dying)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(tmp_path / "ds", 5, EnvConfig(image_size=32), formats=("videos", "finetune"))
    assert list(tmp_path.iterdir()) == []


def test_format_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown formats"):
        make_dataset(tmp_path / "x", 1, EnvConfig(), formats=("videos", "mp4"))
    with pytest.raises(ValueError, match="points at the video frames"):
        make_dataset(tmp_path / "x", 1, EnvConfig(), formats=("finetune",))


def _dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_killed_runs_leftovers_are_cleaned_or_put_back(tmp_path):
    """kill -9 skips the cleanup: the next run removes the dead run's temporary copy, and puts
    back an old dataset that a killed --overwrite had moved aside before the new one landed."""
    dead = _dead_pid()
    stale = tmp_path / f".ds.tmp-{dead}"
    (stale / "videos").mkdir(parents=True)
    (stale / "videos" / "frames.jsonl").write_text("{}\n")
    moved_aside = tmp_path / f".ds.old-{dead}"
    moved_aside.mkdir()
    (moved_aside / "summary.json").write_text('{"episodes": 7}')
    with pytest.raises(FileExistsError, match="--overwrite"):  # the old dataset is back, and kept
        make_dataset(tmp_path / "ds", 1, EnvConfig(image_size=32), formats=("videos",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert json.loads((tmp_path / "ds" / "summary.json").read_text()) == {"episodes": 7}
