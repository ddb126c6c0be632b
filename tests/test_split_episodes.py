"""Rows split by episode: the last episodes held out whole, none in both files."""

from __future__ import annotations

import json
import re

import pytest

from data import split_episodes


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_last_episodes_are_held_out_whole(tmp_path, capsys):
    rows = [
        {"image": "/d/episode_000000/000.png", "n": 0},
        {"image": "/d/episode_000000/001.png", "n": 1},
        {"image": "/d/episode_000001/000.png", "n": 2},
        {"episode_id": "episode_000002", "image": "/elsewhere/x.png", "n": 3},  # the id wins over the folder
        {"image": "/d/episode_000001/001.png", "n": 4},  # episode 1 again, after episode 2 began
    ]
    source = _rows(tmp_path / "rows.jsonl", rows)
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    split_episodes.main(
        ["--input", str(source), "--train", str(train), "--eval", str(held), "--held_out", "2"]
    )
    read = lambda p: [json.loads(line)["n"] for line in p.read_text().splitlines()]  # noqa: E731
    assert read(train) == [0, 1]
    assert read(held) == [2, 3, 4]
    assert "2 rows of 1 episodes" in capsys.readouterr().out


def test_bad_input_is_named_and_nothing_is_written(tmp_path):
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    no_episode = _rows(tmp_path / "a.jsonl", [{"image": "/d/episode_000000/0.png"}, {"text": "x"}])
    one_episode = _rows(tmp_path / "b.jsonl", [{"image": "/d/episode_000000/0.png"}])
    cases = [
        (no_episode, "1", "a.jsonl:2: neither"),
        (one_episode, "1", "1 episode(s); a split needs at least 2"),
    ]
    for source, held_out, message in cases:
        argv = ["--input", str(source), "--train", str(train), "--eval", str(held), "--held_out", held_out]
        with pytest.raises(SystemExit, match=re.escape(message)):
            split_episodes.main(argv)
    assert not train.exists() and not held.exists()


def test_train_episodes_keeps_the_first_labelled_episodes_and_the_same_held_out_ones(tmp_path):
    rows = [{"episode_id": f"e{k // 2}", "n": k} for k in range(8)]  # four episodes of two rows
    source = _rows(tmp_path / "rows.jsonl", rows)
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    argv = ["--input", str(source), "--train", str(train), "--eval", str(held), "--held_out", "1"]
    split_episodes.main([*argv, "--train_episodes", "2"])
    read = lambda p: [json.loads(line)["n"] for line in p.read_text().splitlines()]  # noqa: E731
    assert read(train) == [0, 1, 2, 3]
    assert read(held) == [6, 7]
    with pytest.raises(SystemExit, match="--train_episodes 4, but only 3 episodes are not held out"):
        split_episodes.main([*argv, "--train_episodes", "4"])
