"""Episode sources (``latent_pretraining.episodes``) and the latent action model's frame pairs,
batches and host stream (``lam.data``)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from data.make_tabletop import make_dataset, run_episode
from lam.data import (
    PairBatches,
    drop_static,
    frame_pairs,
    pair_actions,
    pair_stream,
    select_pairs,
    split_episodes,
)
from latent_pretraining.episodes import (
    Episode,
    image_folders,
    jsonl_frames,
    open_episodes,
    rlds_episodes,
    video_files,
)
from sim.env import EnvConfig, TabletopEnv
from sim.tasks import TASK_KINDS

EXPORT_EPISODES, EXPORT_SEED, EXPORT_STEPS = 3, 7, 10


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A small tabletop export (image folders, frames.jsonl, RLDS) and the episodes it holds."""
    out = tmp_path_factory.mktemp("lam_data") / "tabletop"
    config = EnvConfig(image_size=32, max_steps=EXPORT_STEPS)
    make_dataset(out, EXPORT_EPISODES, config, seed=EXPORT_SEED, noise=0.1, formats=("videos", "rlds"))
    env = TabletopEnv(config)
    expected = [
        run_episode(env, EXPORT_SEED + i, TASK_KINDS[i % len(TASK_KINDS)], 0.1)
        for i in range(EXPORT_EPISODES)
    ]
    return out, expected


def memory_episode(frames, episode_id="ep", actions=None, fps=None) -> Episode:
    frames = [np.asarray(f, np.uint8) for f in frames]
    return Episode(episode_id, len(frames), "", lambda t: frames[t], None, actions, fps)


def solid(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def moving_square(n: int, size: int = 32) -> list[np.ndarray]:
    """Frames with a white square moving right over a dark, slowly brightening background."""
    frames = []
    for i in range(n):
        frame = np.full((size, size, 3), 20 + 10 * i, np.uint8)
        frame[8:16, 2 + 2 * i : 10 + 2 * i] = 255
        frames.append(frame)
    return frames


# ----------------------------------------------------------------------------- sources


def test_plain_folders_natural_order_and_instruction(tmp_path):
    values = {"1.png": 10, "2.png": 20, "10.png": 30}
    for name, value in values.items():
        (tmp_path / "run_a").mkdir(exist_ok=True)
        Image.fromarray(solid(value)).save(tmp_path / "run_a" / name)
    (tmp_path / "run_a" / "instruction.txt").write_text("stack the cups\n")
    (tmp_path / "run_b" / "cam").mkdir(parents=True)
    for t in range(2):
        Image.fromarray(solid(100 + t)).save(tmp_path / "run_b" / "cam" / f"frame_{t}.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")

    episodes = image_folders(tmp_path)
    assert [e.episode_id for e in episodes] == ["run_a", "run_b/cam"]
    a, b = episodes
    assert [Path(p).name for p in a.image_paths] == ["1.png", "2.png", "10.png"]
    assert a.instruction == "stack the cups" and b.instruction == ""
    assert [int(a.frame(t)[0, 0, 0]) for t in range(3)] == [10, 20, 30]
    assert a.actions is None and a.fps is None and b.num_frames == 2
    with pytest.raises(IndexError, match="run_a"):
        a.frame(3)
    with pytest.raises(ValueError, match="no folder"):
        image_folders(tmp_path / "empty")


def test_tabletop_export_reads_frames_instructions_and_actions(export):
    out, expected = export
    for root in (out, out / "videos"):
        episodes = image_folders(root)
        assert [e.episode_id for e in episodes] == [e["episode_id"] for e in expected]
        for episode, sim in zip(episodes, expected, strict=True):
            assert episode.num_frames == len(sim["frames"]) and episode.instruction == sim["instruction"]
            for t in (0, episode.num_frames - 1):
                np.testing.assert_array_equal(episode.frame(t), sim["frames"][t])
            assert episode.actions.shape == (episode.num_frames - 1, 7)
            np.testing.assert_allclose(episode.actions, np.stack(sim["actions"]), rtol=0, atol=0)
    # the export's frames.jsonl is itself LAPA-style JSONL and gives the same episodes
    from_jsonl = {e.episode_id: e for e in jsonl_frames(out / "videos" / "frames.jsonl")}
    for episode in image_folders(out):
        other = from_jsonl[episode.episode_id]
        assert other.image_paths == [str(Path(p).resolve()) for p in episode.image_paths]
        np.testing.assert_array_equal(other.actions, episode.actions)


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(solid(value)).save(path)


def test_jsonl_groups_rows_sorts_by_t_and_resolves_relative_paths(tmp_path):
    for t in range(3):
        write_png(tmp_path / "imgs" / "ep1" / f"{t}.png", 50 + t)
        write_png(tmp_path / "imgs" / "ep2" / f"{t}.png", 150 + t)
    rows = [  # ep1 out of order with explicit t; ep2 by parent folder and order of appearance
        {"image": "imgs/ep1/2.png", "episode_id": 1, "t": 2, "instruction": "lift"},
        {"image": str(tmp_path / "imgs/ep2/0.png"), "raw_actions": [0.5, 1.0], "action": [3, 4]},
        {"image": "imgs/ep1/0.png", "episode_id": 1, "t": 0, "instruction": "lift", "action": [1.0]},
        {"image": "imgs/ep2/1.png", "raw_actions": [0.25, 0.0], "instruction": "place"},
        {"image": "imgs/ep1/1.png", "episode_id": 1, "t": 1, "action": [2.0]},
        {"image": "imgs/ep2/2.png", "raw_actions": [1.0, 1.0]},
    ]
    path = tmp_path / "frames.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")

    ep1, ep2 = jsonl_frames(path)
    assert ep1.episode_id == "1" and ep2.episode_id == str(tmp_path / "imgs" / "ep2")
    assert [int(ep1.frame(t)[0, 0, 0]) for t in range(3)] == [50, 51, 52]
    assert [int(ep2.frame(t)[0, 0, 0]) for t in range(3)] == [150, 151, 152]
    assert ep1.instruction == "lift" and ep2.instruction == "place"
    np.testing.assert_array_equal(ep1.actions, [[1.0], [2.0]])  # all but the last frame
    np.testing.assert_array_equal(ep2.actions, [[0.5, 1.0], [0.25, 0.0], [1.0, 1.0]])  # raw_actions win


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"image": "a.png", "t": "3"}, r"frames\.jsonl:2: field 't'"),
        ({"t": 1}, r"frames\.jsonl:2: field 'image'"),
        ({"image": "a.png", "raw_actions": [1, "x"]}, r"frames\.jsonl:2: field 'raw_actions'"),
        ({"image": "a.png", "instruction": 5}, r"frames\.jsonl:2: field 'instruction'"),
        ({"image": "missing.png"}, r"frames\.jsonl:2: field 'image': image .*missing\.png does not exist"),
        ({"image": "a.png", "episode_id": "e", "t": 0}, r"frames\.jsonl:2: episode 'e' already has t=0"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path, bad_row, message):
    write_png(tmp_path / "a.png", 1)
    path = tmp_path / "frames.jsonl"
    good = {"image": "a.png", "episode_id": "e", "t": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad_row) + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        jsonl_frames(path)


def test_jsonl_not_json_and_partial_actions(tmp_path):
    write_png(tmp_path / "a.png", 1)
    path = tmp_path / "frames.jsonl"
    path.write_text('{"image": "a.png"}\n{"image": \n')
    with pytest.raises(ValueError, match=r"frames\.jsonl:2: not valid JSON"):
        jsonl_frames(path)
    rows = [{"image": "a.png", "t": t, "action": [0.0]} for t in range(3)]
    del rows[0]["action"]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"frames\.jsonl:1: .*none on frame t=0"):
        jsonl_frames(path)


def test_jsonl_image_paths_stay_in_the_dataset_and_bytes_must_be_utf8(tmp_path):
    (tmp_path / "data").mkdir()
    write_png(tmp_path / "outside.png", 1)
    path = tmp_path / "data" / "frames.jsonl"
    path.write_text('{"image": "../outside.png"}\n')
    with pytest.raises(ValueError, match=r"frames\.jsonl:1: image path '../outside.png' lies outside"):
        jsonl_frames(path)
    (episode,) = jsonl_frames(path, image_root=tmp_path / "data" / "..")  # a wider root, when asked
    assert episode.image_paths == [str(tmp_path / "outside.png")]
    path.write_bytes(b'{"image": "a\xff.png"}\n')
    with pytest.raises(ValueError, match=r"frames\.jsonl:1: not UTF-8 text"):
        jsonl_frames(path)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv444p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_videos_gif_and_mp4_read_back(tmp_path):
    frames = moving_square(10)
    gif = tmp_path / "clips" / "b.gif"
    gif.parent.mkdir()
    Image.fromarray(frames[0]).save(
        gif, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]], duration=100, loop=0
    )
    write_mp4(tmp_path / "clips" / "a.mp4", frames, fps=12)

    mp4_episode, gif_episode = video_files(tmp_path / "clips", cache_videos=1)
    assert (mp4_episode.episode_id, gif_episode.episode_id) == ("a.mp4", "b.gif")
    assert mp4_episode.num_frames == gif_episode.num_frames == 10
    assert mp4_episode.fps == pytest.approx(12.0) and gif_episode.fps == pytest.approx(10.0)
    assert mp4_episode.image_paths is None and mp4_episode.instruction == ""
    for t in (0, 5, 9, 3):  # back and forth between files through the one-file cache
        np.testing.assert_array_equal(gif_episode.frame(t), frames[t])  # few colours: GIF is lossless
        error = np.abs(mp4_episode.frame(t).astype(int) - frames[t]).mean()
        assert error < 3.0, (t, error)
    (single,) = video_files(tmp_path / "clips" / "b.gif")
    assert single.episode_id == "b.gif" and single.num_frames == 10
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        video_files(tmp_path / "clips")


def test_rlds_frames_instructions_and_actions_match_the_export(export):
    out, expected = export
    path = out / "rlds" / "tabletop" / "1.0.0"
    episodes = {e.episode_id: e for e in rlds_episodes(path)}
    assert sorted(episodes) == [e["episode_id"] for e in expected]
    for folder_episode, sim in zip(image_folders(out), expected, strict=True):
        episode = episodes[sim["episode_id"]]
        assert episode.num_frames == folder_episode.num_frames and episode.instruction == sim["instruction"]
        for t in range(episode.num_frames):
            np.testing.assert_array_equal(episode.frame(t), folder_episode.frame(t))
        assert episode.actions.shape == (episode.num_frames, 7)  # one per step; the last step's is zero
        np.testing.assert_allclose(episode.actions[:-1], np.stack(sim["actions"]), rtol=1e-6, atol=1e-7)
    with pytest.raises(KeyError, match="observation keys"):
        rlds_episodes(path, image_key="wrist_image")


def test_open_episodes_dispatch_and_the_tabletop_export(export, tmp_path):
    out, expected = export
    folder = open_episodes("folder", str(out))
    assert [e.episode_id for e in folder] == [e.episode_id for e in image_folders(out)]
    jsonl = open_episodes("jsonl", str(out / "videos" / "frames.jsonl"))
    assert [e.num_frames for e in jsonl] == [e.num_frames for e in folder]
    # the tabletop source is the export on disk (its root or its videos/), with the expert's actions
    for root in (out, out / "videos"):
        episodes = open_episodes("tabletop", str(root))
        assert [e.episode_id for e in episodes] == [e["episode_id"] for e in expected]
        second, sim = episodes[1], expected[1]
        assert second.instruction == sim["instruction"] and second.num_frames == len(sim["frames"])
        np.testing.assert_array_equal(second.frame(second.num_frames - 1), sim["frames"][-1])
        np.testing.assert_array_equal(second.actions, np.stack(sim["actions"]))
    with pytest.raises(ValueError, match=r"tabletop source needs path: .*data\.make_tabletop --out DIR"):
        open_episodes("tabletop", "")
    with pytest.raises(ValueError, match=r"the rlds source needs path"):
        open_episodes("rlds", "")
    write_png(tmp_path / "plain" / "0.png", 1)  # image folders, but no export index
    with pytest.raises(FileNotFoundError, match=r"plain has no index\.json .*not a tabletop export"):
        open_episodes("tabletop", str(tmp_path / "plain"))
    with pytest.raises(FileNotFoundError, match=r"tabletop export .*nowhere does not exist"):
        open_episodes("tabletop", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown episode source 'mp4'"):
        open_episodes("mp4", str(out))


# ----------------------------------------------------------------------------- pairs


def test_frame_pairs_offsets_and_tails():
    episodes = [memory_episode([solid(0)] * 5, "a", fps=10.0), memory_episode([solid(0)] * 3, "b", fps=5.0)]
    np.testing.assert_array_equal(
        frame_pairs(episodes, offset=2), [[0, 0, 2], [0, 1, 3], [0, 2, 4], [1, 0, 2]]
    )
    clamp = frame_pairs(episodes, offset=2, tail="clamp")
    np.testing.assert_array_equal(
        clamp, [[0, 0, 2], [0, 1, 3], [0, 2, 4], [0, 3, 4], [0, 4, 4], [1, 0, 2], [1, 1, 2], [1, 2, 2]]
    )
    assert clamp.dtype == np.int64
    # 0.3 s is 3 frames at 10 fps and round(1.5) = 2 frames at 5 fps
    np.testing.assert_array_equal(
        frame_pairs(episodes, offset_seconds=0.3), [[0, 0, 3], [0, 1, 4], [1, 0, 2]]
    )
    np.testing.assert_array_equal(frame_pairs(episodes, offset_seconds=0.01)[:2], [[0, 0, 1], [0, 1, 2]])
    assert frame_pairs(episodes, offset=9).shape == (0, 3)
    with pytest.raises(ValueError, match="episode 'c' has no fps"):
        frame_pairs([*episodes, memory_episode([solid(0)] * 2, "c")], offset_seconds=0.5)
    with pytest.raises(ValueError, match="tail"):
        frame_pairs(episodes, tail="wrap")


def test_drop_static_removes_pairs_without_change():
    a, b, c = solid(0, 40), solid(200, 40), solid(90, 40)
    episodes = [memory_episode([a, a, b, b, b, c], "moving"), memory_episode([c, c], "still")]
    pairs = frame_pairs(episodes)
    kept, dropped = drop_static(episodes, pairs, threshold=0.01, size=8)
    np.testing.assert_array_equal(kept, [[0, 1, 2], [0, 4, 5]])
    assert dropped == 4
    kept, dropped = drop_static(episodes, pairs, threshold=0.0)
    assert dropped == 0 and len(kept) == len(pairs)


def test_pair_actions_sums_deltas_and_takes_the_gripper_at_t2_minus_1():
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(4, 7))
    actions[:, 6] = [0, 1, 1, 0]
    episodes = [memory_episode([solid(0)] * 5, "a", actions=actions)]
    pairs = frame_pairs(episodes, offset=3, tail="clamp")  # (0,3) (1,4) (2,4) (3,4) (4,4)
    got = pair_actions(episodes, pairs)
    assert got.shape == (5, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, :6], actions[0:3, :6].sum(0), rtol=1e-6)
    np.testing.assert_allclose(got[1, :6], actions[1:4, :6].sum(0), rtol=1e-6)
    assert got[0, 6] == actions[2, 6] == 1 and got[1, 6] == actions[3, 6] == 0
    np.testing.assert_allclose(got[3, :6], actions[3, :6], rtol=1e-6)
    np.testing.assert_array_equal(got[4], np.zeros(7))  # the last frame paired with itself
    assert pair_actions([*episodes, memory_episode([solid(0)] * 2, "b")], pairs) is None


def test_split_episodes_is_by_episode_and_deterministic():
    train, held = split_episodes(20, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert set(train).isdisjoint(held) and sorted([*train, *held]) == list(range(20))
    again = split_episodes(20, 0.25, seed=3)
    np.testing.assert_array_equal(again[1], held)
    assert any(not np.array_equal(split_episodes(20, 0.25, seed=s)[1], held) for s in range(4, 8))
    assert len(split_episodes(2, 0.01, seed=0)[1]) == 1  # at least one held-out episode
    assert len(split_episodes(5, 0.0, seed=0)[1]) == 0
    assert len(split_episodes(2, 0.9, seed=0)[0]) == 1  # and at least one training episode
    pairs = frame_pairs([memory_episode([solid(0)] * 3, str(i)) for i in range(20)])
    assert set(select_pairs(pairs, held)[:, 0]) == set(held)
    assert set(select_pairs(pairs, train)[:, 0]).isdisjoint(held)


# ----------------------------------------------------------------------------- batches


def test_make_batch_resizes_like_lapa_and_carries_actions():
    frames = moving_square(4, size=32)
    actions = np.arange(21, dtype=np.float64).reshape(3, 7)
    episodes = [memory_episode(frames, "a", actions=actions)]
    batches = PairBatches(episodes)
    batch = batches.make_batch(np.array([[0, 0, 2], [0, 3, 3]]), image_size=16)
    assert batch["frames"].shape == (2, 2, 16, 16, 3) and batch["frames"].dtype == np.float32
    expected = np.asarray(Image.fromarray(frames[2]).resize((16, 16), Image.Resampling.BILINEAR)) / 255.0
    np.testing.assert_allclose(batch["frames"][0, 1], expected, atol=1e-6)
    np.testing.assert_array_equal(batch["actions"], pair_actions(episodes, np.array([[0, 0, 2], [0, 3, 3]])))
    same_size = batches.make_batch(np.array([[0, 1, 2]]), image_size=32)
    np.testing.assert_array_equal(same_size["frames"][0, 0], frames[1] / np.float32(255))
    no_actions = PairBatches([memory_episode(frames)]).make_batch(np.array([[0, 0, 1]]), 8)
    assert (
        set(no_actions) == {"frames"} and 0.0 <= no_actions["frames"].min() <= no_actions["frames"].max() <= 1
    )


def counting_episodes(n_episodes: int = 3, n_frames: int = 5) -> list[Episode]:
    """Frame t of episode i is filled with 10 * i + t, so a batch shows which pair it holds."""
    return [
        memory_episode(
            [solid(10 * i + t, 4) for t in range(n_frames)], str(i), actions=np.ones((n_frames - 1, 7))
        )
        for i in range(n_episodes)
    ]


def pair_ids(batch) -> list[tuple[int, int]]:
    values = np.rint(batch["frames"][:, :, 0, 0, 0] * 255).astype(int)
    return [(int(a), int(b)) for a, b in values]


def test_pair_stream_resumes_at_the_next_batch():
    episodes = counting_episodes()
    pairs = frame_pairs(episodes)  # 12 pairs: 3 batches of 4 per epoch
    stream = pair_stream(episodes, pairs, global_batch_size=4, image_size=4, seed=1)
    seen = [pair_ids(next(stream)) for _ in range(4)]  # crosses into epoch 1
    state = stream.state()
    following = pair_ids(next(stream))
    stream.close()
    assert sorted(p for batch in seen[:3] for p in batch) == sorted(
        (10 * i + t, 10 * i + t2) for i, t, t2 in pairs
    )
    assert seen[3] != seen[0]  # a new shuffle each epoch
    resumed = pair_stream(episodes, pairs, global_batch_size=4, image_size=4, seed=1)
    resumed.restore(json.loads(json.dumps(state)))
    assert pair_ids(next(resumed)) == following
    resumed.close()
    with pytest.raises(ValueError, match="not this run's data"):
        pair_stream(episodes, pairs[:-1], 4, 4, seed=1).restore(state)


def test_two_hosts_read_disjoint_pairs(monkeypatch):
    episodes = counting_episodes(n_episodes=4)
    pairs = frame_pairs(episodes)  # 16 pairs
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    per_host = []
    for host in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        stream = pair_stream(episodes, pairs, global_batch_size=4, image_size=4, seed=2, prefetch=0)
        batches = [next(stream) for _ in range(stream.batches_per_epoch)]
        assert stream.batches_per_epoch == 4 and batches[0]["frames"].shape == (2, 2, 4, 4, 3)
        per_host.append([p for b in batches for p in pair_ids(b)])
    assert set(per_host[0]).isdisjoint(per_host[1])
    assert sorted(per_host[0] + per_host[1]) == sorted((10 * i + t, 10 * i + t2) for i, t, t2 in pairs)
    with pytest.raises(ValueError, match="does not split over 2 hosts"):
        pair_stream(episodes, pairs, global_batch_size=3, image_size=4, seed=2)
