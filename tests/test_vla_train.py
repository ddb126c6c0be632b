"""The VLA trainer: learning, 8-device equivalence, kill-and-resume, finetuning from LAPA's checkpoint."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import optax
import pytest
from conftest import LAPA_VLA_FIXTURE
from helpers import (
    override,
    run_killed_at_step,
    run_reading_every_field,
    uniform_bins_csv,
    write_instruction_action_jsonl,
    write_latent_jsonl,
)

from latent_pretraining import train as vla_train
from latent_pretraining.config import from_lapa_config
from latent_pretraining.configs.lapa import get_config
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import create_train_state
from latent_pretraining.lapa_checkpoint import encode_array, iter_records
from latent_pretraining.model import Modality, VLAModel
from latent_pretraining.sequences import TextTokenizer

LAPA_FIXTURE = LAPA_VLA_FIXTURE


def _config(tmp_path, sp_model, preset="debug_latent", **overrides):
    config = get_config(preset)
    config.data.tokenizer = str(sp_model)
    config.data.max_length = 96
    config.run_dir = str(tmp_path / "run")
    config.batch_size = 8
    config.eval_every = 0
    return override(config, overrides)


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_latent_pretraining_loss_falls_well_below_the_start(tmp_path, sp_model):
    write_latent_jsonl(tmp_path / "train.jsonl", 400)
    write_latent_jsonl(tmp_path / "eval.jsonl", 32, seed=1)
    config = _config(
        tmp_path,
        sp_model,
        **{
            "data.train": str(tmp_path / "train.jsonl"),
            "data.eval": str(tmp_path / "eval.jsonl"),
            "total_steps": 250,
            "optimizer.learning_rate": 3e-3,
            "batch_size": 16,
            "export_params": str(tmp_path / "params"),
        },
    )
    last = vla_train.train(config)
    losses = _losses(tmp_path / "run")
    assert losses[250] < 0.3 * losses[10]
    assert last["eval_accuracy_latent"] > 0.6  # chance is 1/8
    keys = [k for k, _ in iter_records(tmp_path / "params")]
    assert ("transformer", "dte", "embedding") in keys  # released in LAPA's format


def test_sharded_run_gives_the_single_device_losses(tmp_path, sp_model, monkeypatch, eight_devices):
    write_latent_jsonl(tmp_path / "train.jsonl", 64)
    settings = {"data.train": str(tmp_path / "train.jsonl"), "total_steps": 20, "log_every": 5}
    vla_train.train(_config(tmp_path / "sharded", sp_model, mesh="1,2,2,2", **settings))
    monkeypatch.setattr(vla_train, "make_mesh", lambda spec: make_mesh("1,1,1,1", devices=eight_devices[:1]))
    vla_train.train(_config(tmp_path / "single", sp_model, **settings))
    a, b = _losses(tmp_path / "sharded" / "run"), _losses(tmp_path / "single" / "run")
    assert a.keys() == b.keys() == {5, 10, 15, 20}
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4)


def test_kill_and_resume_gives_the_uninterrupted_run(tmp_path, sp_model, monkeypatch):
    write_latent_jsonl(tmp_path / "train.jsonl", 64)
    settings = {
        "data.train": str(tmp_path / "train.jsonl"),
        "total_steps": 20,
        "log_every": 5,
        "save_every": 10,
        "async_checkpoints": False,
    }
    vla_train.train(_config(tmp_path / "straight", sp_model, **settings))
    run_killed_at_step(
        monkeypatch, 13, lambda: vla_train.train(_config(tmp_path / "resumed", sp_model, **settings))
    )
    vla_train.train(_config(tmp_path / "resumed", sp_model, **settings))  # resumes at step 10
    a, b = _losses(tmp_path / "straight" / "run"), _losses(tmp_path / "resumed" / "run")
    assert a.keys() == b.keys()
    for step in (15, 20):
        assert b[step] == pytest.approx(a[step], rel=1e-5)


def test_finetuning_from_lapa_checkpoint_adds_and_trains_the_action_head(tmp_path, sp_model, caplog):
    # LAPA's fixture checkpoint without its action table and head: a latent-pretrained model
    with open(tmp_path / "latent_only", "wb") as f:
        for key, array in iter_records(LAPA_FIXTURE / "params"):
            if key[-2] not in ("ate", "action_head"):
                f.write(msgpack.packb((list(key), encode_array(array)), use_bin_type=True))
    write_instruction_action_jsonl(tmp_path / "train.jsonl", 200)  # the fixture's vision table is tiny
    write_instruction_action_jsonl(tmp_path / "eval.jsonl", 16, seed=1)
    uniform_bins_csv(tmp_path / "bins.csv")
    config = _config(
        tmp_path,
        sp_model,
        preset="debug_finetune",
        **{
            "data.train": str(tmp_path / "train.jsonl"),
            "data.eval": str(tmp_path / "eval.jsonl"),
            "data.action_bins": str(tmp_path / "bins.csv"),
            "total_steps": 150,
            "batch_size": 16,
            "init": f"params::{tmp_path / 'latent_only'}",
            "optimizer.learning_rate": 3e-3,
        },
    )
    config.model = from_lapa_config(LAPA_FIXTURE / "config.json")
    config.model.dtype = "float32"
    with caplog.at_level(logging.WARNING):
        unread = {f"data.{key}": "only with data.vqgan_checkpoint" for key in ("image_root", "vqgan_config")}
        last = run_reading_every_field(config, lambda: vla_train.train(config), unread)
    assert "action_embed" in caplog.text and "action_head" in caplog.text
    losses = _losses(tmp_path / "run")
    assert losses[150] < 0.5 * losses[10]
    assert last["eval_accuracy_action"] > 0.9  # chance is 1/32
    assert last["eval_action_mae"] < 0.01  # bin centres: a right bin is exact, a wrong one costs >= 1/32
    assert max(last[f"eval_action_mae_median_{d}"] for d in range(7)) < 0.02  # confident: median = argmax


def test_action_ids_the_bins_cannot_decode_and_a_short_bins_csv_are_errors(tmp_path, sp_model):
    write_instruction_action_jsonl(tmp_path / "train.jsonl", 16, bins=32)
    settings = {"data.train": str(tmp_path / "train.jsonl"), "data.action_bins": str(tmp_path / "bins.csv")}
    config = _config(tmp_path, sp_model, preset="debug_finetune", **settings)
    uniform_bins_csv(tmp_path / "bins.csv", bins=32, dims=6)  # 6 rows of edges for 7-D actions
    with pytest.raises(ValueError, match=r"bins.csv: 6 rows of bin edges, but actions have 7 dimensions"):
        vla_train.train(config)
    uniform_bins_csv(tmp_path / "bins.csv", bins=16)  # ids up to 31 in the rows
    with pytest.raises(
        ValueError, match=r"train.jsonl:\d+: field 'action': dimension \d has id \d+ but its bins are 0..15"
    ):
        vla_train.train(config)
    edges = (
        [",".join(map(str, range(33)))] + [",".join(str(e / 32) for e in range(33))] * 6 + ["-0.5,0.5,1.5"]
    )
    (tmp_path / "bins.csv").write_text("\n".join(edges) + "\n")  # a two-bin gripper: ids 0 and 1 only
    with pytest.raises(ValueError, match=r"field 'action': dimension 6 has id \d+ but its bins are 0..1"):
        vla_train.train(config)


def _write_vqgan_rows(tmp_path):
    """A random ``tiny`` VQGAN (8x8 codes per image) at tmp_path/vqgan, and train/eval rows of 8 images."""
    from flax import nnx
    from PIL import Image

    from latent_pretraining.vqgan.lwm_checkpoint import save_lwm_vqgan
    from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config

    cfg = get_vqgan_config("tiny")
    save_lwm_vqgan(VQGAN(cfg, rngs=nnx.Rngs(0)), tmp_path / "vqgan")
    (tmp_path / "vqgan_config.json").write_text(cfg.to_json())
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(8):
        Image.fromarray(np.full((32, 32, 3), 25 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rows.append(
            {
                "image": f"{i}.png",
                "instruction": "push",
                "delta": [1, 2, 3, 4],
                "fields": "[instruction],[vision],delta",
            }
        )
    for name in ("train.jsonl", "eval.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_held_out_images_are_never_augmented_and_the_modes_are_recorded(tmp_path, sp_model, monkeypatch):
    _write_vqgan_rows(tmp_path)
    modes = []
    real = vla_train.load_examples

    def recording(paths, builder, max_length, skip_invalid, images):
        modes.append((paths[0].rsplit("/", 1)[-1], images.mode))
        return real(paths, builder, max_length, skip_invalid, images)

    class StoppedError(Exception):
        pass

    def stop(*args, **kwargs):
        raise StoppedError

    monkeypatch.setattr(vla_train, "load_examples", recording)
    monkeypatch.setattr(vla_train, "create_train_state", stop)
    settings = {
        "data.train": str(tmp_path / "train.jsonl"),
        "data.eval": str(tmp_path / "eval.jsonl"),
        "data.vqgan_checkpoint": str(tmp_path / "vqgan"),
        "data.image_root": "images",  # relative to the working directory, as a user writes it
        "data.tokens_per_frame": 64,
        "data.pp_train": "augment",
    }
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoppedError):
        vla_train.train(_config(tmp_path, sp_model, **settings))
    assert modes == [("train.jsonl", "augment"), ("eval.jsonl", "center_crop")]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert (recorded["pp_train"], recorded["pp_eval"]) == ("augment", "center_crop")


def test_a_vision_grid_must_match_the_vqgan_images(tmp_path, sp_model):
    _write_vqgan_rows(tmp_path)
    settings = {
        "data.train": str(tmp_path / "train.jsonl"),
        "data.vqgan_checkpoint": str(tmp_path / "vqgan"),
        "data.image_root": str(tmp_path / "images"),
        "model.vision_grid": 4,  # 16 tokens per frame, as the debug preset has; the VQGAN gives 64
    }
    refused = r"vision_grid 4 lays out 16 codes per frame; the frames have 64 \(one image of .*vqgan\)"
    with pytest.raises(ValueError, match=refused):
        vla_train.train(_config(tmp_path, sp_model, **settings))


class _StartedError(Exception):
    """Stops a run once its step-0 state is known."""


def test_init_from_a_run_loads_its_parameters_only_across_optimizer_changes(tmp_path, sp_model, monkeypatch):
    write_latent_jsonl(tmp_path / "train.jsonl", 32)
    data = {"data.train": str(tmp_path / "train.jsonl"), "async_checkpoints": False}
    final = {}
    run, initialise = vla_train.loop.run, vla_train._initialise

    def keep_final(*args, **kwargs):
        state, last = run(*args, **kwargs)
        final["donor"] = jax.device_get(state["params"])
        return state, last

    monkeypatch.setattr(vla_train.loop, "run", keep_final)
    vla_train.train(_config(tmp_path / "donor", sp_model, total_steps=3, save_every=3, **data))
    donor = tmp_path / "donor" / "run"
    files = sorted(donor.rglob("*"))

    def stop_at_step_zero(state, config, mesh):
        final["started"] = jax.device_get(initialise(state, config, mesh)["params"])
        raise _StartedError

    monkeypatch.setattr(vla_train, "_initialise", stop_at_step_zero)
    config = _config(tmp_path / "new", sp_model, init=str(donor), **{"optimizer.accumulate_steps": 2}, **data)
    with pytest.raises(_StartedError):  # a MultiSteps optimizer state
        vla_train.train(config)
    jax.tree.map(np.testing.assert_array_equal, final["started"], final["donor"])

    config.optimizer.accumulate_steps, config.optimizer.frozen = 1, "layers/.*"
    frozen, _ = build_optimizer(config)  # a multi_transform optimizer state
    mesh = make_mesh(config.mesh)
    _, state, _ = create_train_state(lambda rngs: VLAModel(config.model, rngs=rngs), optax.adam(1e-3), mesh)
    started = initialise({**state, "opt_state": frozen.init(state["params"])}, config, mesh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(started["params"]), final["donor"])
    assert sorted(donor.rglob("*")) == files  # read-only: the donor gains nothing


def test_training_with_frozen_groups_runs(tmp_path, sp_model):
    """A frozen group's optimizer state holds optax MaskedNodes, which the sharding of the
    train state must pass through."""
    write_latent_jsonl(tmp_path / "train.jsonl", 16)
    settings = {"data.train": str(tmp_path / "train.jsonl"), "total_steps": 3, "log_every": 1}
    config = _config(tmp_path, sp_model, **settings, **{"optimizer.frozen": "layers/.*"})
    config.save_every = 0
    last = vla_train.train(config)
    assert last["loss"] > 0


def test_tokenizer_and_row_length_must_fit_the_model(sp_model):
    config = get_config("debug_latent")
    config.data.tokenizer = str(sp_model)
    tokenizer = TextTokenizer(sp_model)
    vla_train._check_text_setup(tokenizer, config)  # the debug model fits the tiny tokenizer
    config.model.eos_token_id = 3
    with pytest.raises(ValueError, match=r"BOS/EOS ids 1/2; the model config says 1/3"):
        vla_train._check_text_setup(tokenizer, config)
    config.model.eos_token_id = 2
    config.data.max_length = config.model.max_sequence_length + 1
    with pytest.raises(ValueError, match=r"exceeds model\.max_sequence_length"):
        vla_train._check_text_setup(tokenizer, config)


def test_a_vision_grid_reaches_the_model_and_must_match_the_frames(tmp_path, sp_model):
    """A 4x4 grid with the debug preset's 16 tokens per frame changes the first loss (same seed and
    rows); a 3x3 grid, or a grid with a LAPA params:: export, is refused before the run dir exists."""
    write_latent_jsonl(tmp_path / "train.jsonl", 16)
    settings = {"data.train": str(tmp_path / "train.jsonl"), "total_steps": 1, "log_every": 1}
    losses = {}
    for grid in (0, 4):
        config = _config(tmp_path, sp_model, **settings, **{"model.vision_grid": grid})
        config.run_dir, config.save_every = str(tmp_path / f"run_{grid}"), 0
        losses[grid] = vla_train.train(config)["loss"]
    assert np.isfinite(losses[4]) and abs(losses[4] - losses[0]) > 1e-6
    config.model.vision_grid, config.run_dir = 3, str(tmp_path / "run_3")
    with pytest.raises(
        ValueError, match=r"model\.vision_grid 3 lays out 9 codes per frame; the frames have 16"
    ):
        vla_train.train(config)
    config.model.vision_grid, config.export_params = 4, str(tmp_path / "lapa_params")
    with pytest.raises(ValueError, match=r"export_params writes LAPA's params:: format"):
        vla_train.train(config)
    assert not (tmp_path / "run_3").exists()


def test_eval_takes_each_action_targets_median_over_its_own_dimensions_bins():
    num_bins = [4, 8, 2, 6, 4, 4, 3]  # per dimension; the vocabulary has 8 ids
    valid = np.zeros((7, 8), bool)
    for d, n in enumerate(num_bins):
        valid[d, :n] = True
    starts = [3, 5]  # row 0: 3 text targets first; row 1: 5; then the 7 action targets
    modality = np.full((2, 14), int(Modality.TEXT), np.int32)
    segments = np.ones((2, 14), np.int32)
    for r, s in enumerate(starts):
        modality[r, s : s + 7] = int(Modality.ACTION)
    segments[0, 10:] = 0  # row 0's padding
    batch = {"target_modality": jnp.asarray(modality), "segment_ids": jnp.asarray(segments)}
    ids = np.asarray(vla_train.action_median_ids(jnp.zeros((2, 14, 8)), batch, jnp.asarray(valid)))
    # uniform over n bins: the first id whose CDF (i + 1) / n reaches 1/2
    expected = [(n + 1) // 2 - 1 for n in num_bins]
    for r, s in enumerate(starts):
        assert ids[r, s : s + 7].tolist() == expected == [1, 3, 0, 2, 1, 1, 1]
