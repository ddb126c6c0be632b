"""VQ tokenizer training on the shared infrastructure: learning, resume, sharding, restarts, export."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import override, run_killed_at_step

from latent_pretraining.configs.vqgan import get_config
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import create_train_state
from latent_pretraining.vqgan import train as vq_train
from latent_pretraining.vqgan.lwm_checkpoint import load_lwm_vqgan
from latent_pretraining.vqgan.model import VQGAN


def _config(run_dir, **overrides):
    config = get_config("tiny")
    config.run_dir = str(run_dir)
    config.mesh = "-1,1,1,1"
    return override(config, overrides)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vq")
    last = vq_train.train(_config(run_dir, total_steps=60, eval_every=30, save_every=30))
    return run_dir, last


def test_training_lowers_the_loss_and_reports_codebook_health(trained):
    run_dir, last = trained
    rows = [r for r in _metrics(run_dir) if "train/loss" in r]
    assert rows[-1]["train/loss"] < 0.6 * rows[0]["train/loss"]
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


def test_kill_and_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    settings = {"total_steps": 20, "save_every": 10, "eval_every": 0, "async_checkpoints": False}
    straight = tmp_path / "straight"
    vq_train.train(_config(straight, **settings))
    resumed = tmp_path / "resumed"
    run_killed_at_step(monkeypatch, 11, lambda: vq_train.train(_config(resumed, **settings)))
    assert not (resumed / "vqgan").exists()
    vq_train.train(_config(resumed, **settings))  # the rerun resumes at step 10
    a = {r["step"]: r["train/loss"] for r in _metrics(straight) if "train/loss" in r}
    b = {r["step"]: r["train/loss"] for r in _metrics(resumed) if "train/loss" in r}
    assert sorted(b) == [5, 10, 15, 20]  # steps 11-20 ran once, after the resume
    for step in (15, 20):
        assert b[step] == pytest.approx(a[step], rel=1e-5)
    with open(straight / "vqgan", "rb") as f1, open(resumed / "vqgan", "rb") as f2:
        assert f1.read() == f2.read()


def test_data_parallel_over_8_devices_matches_one_device(tmp_path, monkeypatch, eight_devices):
    many = vq_train.train(_config(tmp_path / "many", total_steps=10, eval_every=0, mesh="8,1,1,1"))
    monkeypatch.setattr(vq_train, "make_mesh", lambda spec: make_mesh("1,1,1,1", devices=eight_devices[:1]))
    one = vq_train.train(_config(tmp_path / "one", total_steps=10, eval_every=0))
    assert many["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert many["eval_psnr"] == pytest.approx(one["eval_psnr"], rel=1e-4)


def test_dead_codes_restart_from_encoder_outputs_of_the_batch(eight_devices):
    config = _config("unused", restart_every=1)
    mesh = make_mesh("1,1,1,1", devices=eight_devices[:1])
    optimizer = optax.adam(0.0)
    graphdef, state, _ = create_train_state(lambda rngs: VQGAN(config.model, rngs=rngs), optimizer, mesh)
    state["rest"]["code_usage"][...] = jnp.zeros(64).at[:8].set(1.0 / 8)  # codes 8.. are dead
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3), minval=-1, maxval=1)
    new_state, metrics = jax.jit(vq_train.make_step(graphdef, optimizer, config))(state, {"images": images})
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


def test_image_sources_folder_rlds_and_tabletop(tmp_path):
    from data.make_tabletop import make_dataset
    from latent_pretraining.vqgan.sources import open_source
    from sim.env import EnvConfig

    make_dataset(tmp_path / "tt", 3, EnvConfig(image_size=32), formats=("videos", "rlds"))
    folder = open_source("folder", str(tmp_path / "tt" / "videos"), 0, 32, 0)
    rlds = open_source("rlds", str(tmp_path / "tt" / "rlds" / "tabletop" / "1.0.0"), 0, 32, 0)
    assert len(folder) == len(rlds) > 10  # the same frames, as PNG files and as TFRecords
    assert folder[0].shape == rlds[0].shape == (32, 32, 3) and folder[0].dtype == np.uint8
    assert {rlds[i].tobytes() for i in range(len(rlds))} == {folder[i].tobytes() for i in range(len(folder))}
    generated = open_source("tabletop", "", 50, 32, 0)
    assert len(generated) == 50 and generated[49].shape == (32, 32, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source("folder", str(tmp_path / "nowhere"), 0, 32, 0)
    with pytest.raises(ValueError, match="unknown image source"):
        open_source("video", "", 0, 32, 0)
