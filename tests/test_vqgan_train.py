"""VQ tokenizer training on the shared infrastructure: learning, resume, sharding, restarts, export."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import override, run_killed_at_step, run_reading_every_field
from PIL import Image

from latent_pretraining.configs.vqgan import get_config
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import create_train_state
from latent_pretraining.core.step import make_train_step
from latent_pretraining.episodes import image_folders
from latent_pretraining.vqgan import train as vq_train
from latent_pretraining.vqgan.lwm_checkpoint import load_lwm_vqgan
from latent_pretraining.vqgan.model import VQGAN


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tabletop export of 8 episodes at 32x32 (about 140 frames; the tiny preset uses 96)."""
    from data.make_tabletop import make_dataset
    from sim.env import EnvConfig

    out = tmp_path_factory.mktemp("vq_data") / "tabletop"
    make_dataset(out, 8, EnvConfig(image_size=32), noise=0.1, formats=("videos", "rlds"))
    return out


def _config(run_dir, export="", **overrides):
    """The tiny preset reading the tabletop export ``export``."""
    config = get_config("tiny")
    config.run_dir = str(run_dir)
    config.mesh = "-1,1,1,1"
    config.data.path = str(export)
    return override(config, overrides)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, export):
    run_dir = tmp_path_factory.mktemp("vq")
    config = _config(run_dir, export, total_steps=60, eval_every=30, save_every=30)
    last = run_reading_every_field(config, lambda: vq_train.train(config), {})
    return run_dir, last


def test_training_lowers_the_loss_and_reports_codebook_health(trained):
    run_dir, last = trained
    rows = [r for r in _metrics(run_dir) if "train/loss" in r]
    # the codebook and commitment terms rise with the warm-up first; the reconstruction falls throughout
    assert rows[-1]["train/loss"] < 0.7 * rows[0]["train/loss"]
    assert rows[-1]["train/rec_mse"] < 0.2 * rows[0]["train/rec_mse"]
    evals = [r for r in _metrics(run_dir) if "eval/psnr" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert evals[-1]["eval/psnr"] > 18.0
    assert 0 < last["eval_code_usage"] <= 1 and 1 <= last["eval_perplexity"] <= 64
    assert (run_dir / "recon_0000030.png").exists() and (run_dir / "recon_0000060.png").exists()
    assert list((run_dir / "tensorboard").iterdir())


def test_exported_tokenizer_loads_in_lwm_format(trained):
    run_dir, _ = trained
    from latent_pretraining.vqgan.encode import resolve_config

    model = load_lwm_vqgan(run_dir / "vqgan", resolve_config(run_dir / "vqgan", None))
    _, codes = model.encode(jnp.zeros((1, 32, 32, 3)))
    assert codes.shape == (1, 8, 8)


def test_kill_and_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch, export):
    settings = {"total_steps": 20, "save_every": 10, "eval_every": 0, "async_checkpoints": False}
    straight = tmp_path / "straight"
    vq_train.train(_config(straight, export, **settings))
    resumed = tmp_path / "resumed"
    run_killed_at_step(monkeypatch, 11, lambda: vq_train.train(_config(resumed, export, **settings)))
    assert not (resumed / "vqgan").exists()
    vq_train.train(_config(resumed, export, **settings))  # the rerun resumes at step 10
    a = {r["step"]: r["train/loss"] for r in _metrics(straight) if "train/loss" in r}
    b = {r["step"]: r["train/loss"] for r in _metrics(resumed) if "train/loss" in r}
    assert sorted(b) == [5, 10, 15, 20]  # steps 11-20 ran once, after the resume
    for step in (15, 20):
        assert b[step] == pytest.approx(a[step], rel=1e-5)
    with open(straight / "vqgan", "rb") as f1, open(resumed / "vqgan", "rb") as f2:
        assert f1.read() == f2.read()


def test_data_parallel_over_8_devices_matches_one_device(tmp_path, monkeypatch, eight_devices, export):
    many = vq_train.train(_config(tmp_path / "many", export, total_steps=10, eval_every=0, mesh="8,1,1,1"))
    monkeypatch.setattr(vq_train, "make_mesh", lambda spec: make_mesh("1,1,1,1", devices=eight_devices[:1]))
    one = vq_train.train(_config(tmp_path / "one", export, total_steps=10, eval_every=0))
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert many["eval_psnr"] == pytest.approx(one["eval_psnr"], rel=1e-4)


def test_dead_codes_restart_from_encoder_outputs_of_the_batch(eight_devices):
    config = _config("unused", restart_every=1)
    mesh = make_mesh("1,1,1,1", devices=eight_devices[:1])
    optimizer = optax.adam(0.0)
    graphdef, state, _ = create_train_state(lambda rngs: VQGAN(config.model, rngs=rngs), optimizer, mesh)
    state["rest"]["code_usage"][...] = jnp.zeros(64).at[:8].set(1.0 / 8)  # codes 8.. are dead
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3), minval=-1, maxval=1)
    step = make_train_step(
        graphdef,
        vq_train.loss_for(config),
        optimizer,
        optax.constant_schedule(0.0),
        vq_train.restarts_for(config),
    )
    new_state, metrics = jax.jit(step)(state, {"images": images})
    before, after = (
        np.asarray(state["params"]["codebook"][...]),
        np.asarray(new_state["params"]["codebook"][...]),
    )
    restarted = np.flatnonzero((before != after).any(axis=1))
    assert int(metrics["restarts"]) == len(restarted) >= 50
    model = vq_train.nnx.merge(graphdef, state["params"], state["rest"])
    z = np.asarray(model.pre_quant(images)).reshape(-1, after.shape[1])
    for code in restarted:
        assert np.abs(z - after[code]).sum(axis=1).min() < 1e-5  # each new code is one of the batch's vectors
    usage = np.asarray(new_state["rest"]["code_usage"][...])
    assert np.allclose(usage[restarted], 1.0 / 64)


def _frames(source: str, path, limit: int = 0):
    """The training frames ``vqgan.train`` reads from ``source`` at ``path``."""
    data = _config("unused", path, **{"data.source": source, "data.limit": limit}).data
    return vq_train.open_frames(data)


def test_frames_of_the_export_as_folders_rlds_and_tabletop_source(export):
    episodes = image_folders(export / "videos")
    folder = _frames("folder", export / "videos")
    assert len(folder) == sum(e.num_frames for e in episodes) > 96
    assert folder[0].shape == (32, 32, 3) and folder[0].dtype == np.uint8
    first = episodes[0].num_frames  # frames run episode after episode
    np.testing.assert_array_equal(folder[first - 1], episodes[0].frame(first - 1))
    np.testing.assert_array_equal(folder[first], episodes[1].frame(0))
    tabletop = _frames("tabletop", export)
    rlds = _frames("rlds", export / "rlds" / "tabletop" / "1.0.0")
    assert len(tabletop) == len(rlds) == len(folder)  # the same frames, as PNG files and as TFRecords
    every = {folder[i].tobytes() for i in range(len(folder))}
    assert {rlds[i].tobytes() for i in range(len(rlds))} == every
    assert {tabletop[i].tobytes() for i in range(len(tabletop))} == every
    # a limit keeps the first frames, and RLDS reads only the episodes that hold them
    limited = _frames("rlds", export / "rlds" / "tabletop" / "1.0.0", limit=30)
    assert len(limited) == 30 and len(limited.episodes) < len(rlds.episodes)
    np.testing.assert_array_equal(limited[29], rlds[29])
    with pytest.raises(IndexError, match="frame 30 of 30"):
        limited[30]
    with pytest.raises(ValueError, match=r"tabletop source needs --config\.data\.path: .*make_tabletop"):
        vq_train.open_frames(get_config("tiny").data)  # the defaults name the field to set
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _frames("folder", export / "nowhere")
    with pytest.raises(ValueError, match="unknown episode source 'mp4'"):
        _frames("mp4", export)


def test_folder_frames_are_every_image_once(tmp_path):
    names = ["a/1.png", "a/2.png", "a/10.png", "b/c/0.bmp", "b/c/1.png", "d.png"]
    for value, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 5, 3), 10 * value, np.uint8)).save(tmp_path / name)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    frames = _frames("folder", tmp_path)
    assert len(frames) == len(names)
    assert sorted(int(frames[i][0, 0, 0]) for i in range(len(frames))) == [10 * v for v in range(len(names))]
    assert frames[0].shape == (6, 5, 3)
    assert len(_frames("folder", tmp_path, limit=4)) == 4
