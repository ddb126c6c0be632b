"""Latent action model: training on the shared infrastructure, sharding, resume, labelling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import override, run_killed_at_step, run_reading_every_field

from lam.checkpoint import CONFIG_FILE, load_lam, save_lam
from lam.configs.lam import get_config
from lam.data import PairBatches, frame_pairs
from lam.label import main as label_main
from lam.model import (
    LatentActionModel,
    MotionKernels,
    code_grid,
    get_lam_config,
    match_brightness,
    patchify,
    unpatchify,
)
from lam.refit import best_kmeans, distortion, kmeans, kmeans_plus_plus
from lam.refit import main as refit_main
from lam.train import codebook_upkeep, load_pairs, loss_for, train
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import compile_step, create_train_state, global_batch
from latent_pretraining.core.step import make_train_step
from latent_pretraining.episodes import image_folders


def _config(tmp_path, name: str = "run", export="", **overrides):
    """The tiny preset reading the tabletop export ``export``."""
    config = get_config("tiny")
    settings = {"run_dir": str(tmp_path / name), "async_checkpoints": False, "data.path": str(export)}
    return override(config, {**settings, **overrides})


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tabletop export of 12 expert episodes at 64x64 (the training data of the tiny runs)."""
    from data.make_tabletop import make_dataset
    from sim.env import EnvConfig

    out = tmp_path_factory.mktemp("lam_export") / "tabletop"
    make_dataset(out, 12, EnvConfig(image_size=64), noise=0.1, formats=("videos",))
    return out


def test_patchify_round_trip_and_lapa_feature_order():
    x = jnp.asarray(np.random.default_rng(0).random((2, 1, 16, 16, 3)), jnp.float32)
    patches = patchify(x, 8)
    assert patches.shape == (2, 1, 2, 2, 192)
    # feature index = c * 64 + p1 * 8 + p2 ('(c p1 p2)' as LAPA's Rearrange)
    assert float(patches[0, 0, 1, 0, 1 * 64 + 2 * 8 + 5]) == float(x[0, 0, 8 + 2, 5, 1])
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, 8, 3)), np.asarray(x))


def test_code_layout_errors_are_clear():
    assert code_grid(4) == (2, 2) and code_grid(2) == (2, 1)
    with pytest.raises(ValueError, match="square"):
        code_grid(3)
    cfg = get_lam_config("tiny")
    cfg.image_size = 32  # 4x4 patch grid: LAPA's 4-code head needs 8x8
    with pytest.raises(ValueError, match="8x8"):
        LatentActionModel(cfg, nnx.Rngs(0))


def test_match_brightness_undoes_a_global_gain_but_keeps_the_motion():
    rng = np.random.default_rng(0)
    first = rng.uniform(0.2, 0.8, (16, 16, 3)).astype(np.float32)
    moved = first.copy()
    moved[4:7, 4:7] = 0.01  # a dark object appears: brightness must not be fitted to it
    gains = np.asarray([1.08, 0.95, 1.02], np.float32)  # per channel, like auto white balance
    frames = jnp.asarray(np.stack([first, moved * gains])[None])
    out = np.asarray(match_brightness(frames))
    np.testing.assert_array_equal(out[0, 0], first)  # the first frame is the reference
    keep = np.ones((16, 16), bool)
    keep[4:7, 4:7] = False
    np.testing.assert_allclose(out[0, 1][keep], first[keep], atol=1e-5)
    assert np.all(out[0, 1][4:7, 4:7] < 0.02)  # the change itself survives


def test_training_target_is_brightness_matched_only_when_configured():
    """A flickering future frame: with matching the model is asked for the steady frame, not the flicker."""
    cfg = get_lam_config("tiny")
    model = LatentActionModel(cfg, nnx.Rngs(3))
    rng = np.random.default_rng(1)
    frames = np.repeat(rng.uniform(0.1, 0.9, (4, 1, 64, 64, 3)).astype(np.float32), 2, axis=1)
    frames[:, 1, 10:20, 10:20] = np.roll(frames[:, 1, 10:20, 10:20], 3, axis=2)  # something moves
    flicker = frames.copy()
    flicker[:, 1] *= 0.95
    target = np.asarray(model(jnp.asarray(flicker))["target"])
    assert np.abs(target - frames[:, 1]).max() < 2e-3 < np.abs(flicker[:, 1] - frames[:, 1]).max()
    assert get_lam_config("lapa").match_brightness is False  # LAPA's preset predicts the raw frame
    model.cfg.match_brightness = False
    np.testing.assert_array_equal(np.asarray(model(jnp.asarray(flicker))["target"]), flicker[:, 1])


def _kernels(size: int = 5) -> MotionKernels:
    return MotionKernels(dim=8, size=size, patch_size=4, rngs=nnx.Rngs(0), param_dtype=jnp.float32)


@pytest.mark.parametrize("dy, dx", [(1, 2), (-2, 0), (0, -1)])
def test_motion_kernels_pull_each_pixel_from_the_chosen_offset(dy, dx):
    rng = np.random.default_rng(0)
    frame = rng.random((2, 16, 16, 3)).astype(np.float32)
    tokens = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
    kernels = _kernels()
    logits = np.full(25, -50.0, np.float32)
    logits[(2 + dy) * 5 + (2 + dx)] = 50.0  # one offset only, whatever the token
    kernels.to_logits.bias[...] = jnp.asarray(logits)
    moved = np.asarray(kernels(tokens, jnp.asarray(frame)))
    rows = np.clip(np.arange(16) + dy, 0, 15)  # beyond the border the edge pixel is repeated
    cols = np.clip(np.arange(16) + dx, 0, 15)
    np.testing.assert_allclose(moved, frame[:, rows][:, :, cols], atol=1e-6)


def test_motion_kernels_start_near_the_identity_and_check_their_size():
    rng = np.random.default_rng(1)
    frame = jnp.asarray(rng.random((1, 16, 16, 3)), jnp.float32)
    tokens = jnp.asarray(rng.normal(size=(1, 4, 4, 8)), jnp.float32)
    kernels = _kernels()
    centre = np.exp(MotionKernels.CENTRE_LOGIT) / (np.exp(MotionKernels.CENTRE_LOGIT) + 24)
    moved = np.asarray(kernels(tokens, frame))
    # the centre's share of the frame, the rest spread evenly over the 24 neighbours
    padded = np.pad(np.asarray(frame), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    neighbours = sum(padded[:, i : i + 16, j : j + 16] for i in range(5) for j in range(5)) - frame
    np.testing.assert_allclose(moved, centre * frame + (1 - centre) / 24 * neighbours, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        _kernels(size=4)
    cfg = get_lam_config("tiny")
    cfg.predict_residual, cfg.motion_kernel = False, 7
    with pytest.raises(ValueError, match="predict_residual"):
        LatentActionModel(cfg, nnx.Rngs(0))
    assert get_lam_config("lapa").motion_kernel == 0  # LAPA's decoder draws pixels only
    assert LatentActionModel(get_lam_config("tiny"), nnx.Rngs(0)).motion is None  # opt-in


def test_encoder_sees_the_future_frame_with_its_pixel_difference():
    cfg = get_lam_config("tiny")
    cfg.difference_embedding = True
    model = LatentActionModel(cfg, nnx.Rngs(4))
    rng = np.random.default_rng(4)
    model.difference_proj.bias[...] = jnp.asarray(rng.normal(size=cfg.dim), jnp.float32)
    frames = rng.random((2, 2, 64, 64, 3)).astype(np.float32)
    tokens = model.embed_patches(jnp.asarray(frames))
    seen = np.asarray(model.encoder_tokens(jnp.asarray(frames), tokens))
    np.testing.assert_array_equal(seen[:, 0], np.asarray(tokens[:, 0]))  # x_t as LAPA embeds it
    # x_{t+H}'s token at patch (i, j) gains W^T (its pixels minus x_t's, in (c p1 p2) order) + b
    diff = (frames[:, 1] - frames[:, 0]).reshape(2, 8, 8, 8, 8, 3).transpose(0, 1, 3, 5, 2, 4)
    added = diff.reshape(2, 8, 8, 192) @ np.asarray(model.difference_proj.kernel[...])
    added += np.asarray(model.difference_proj.bias[...])
    np.testing.assert_allclose(seen[:, 1] - np.asarray(tokens[:, 1]), added, atol=1e-4)
    assert get_lam_config("lapa").difference_embedding is False  # LAPA's encoder


def test_max_pool_code_head_reads_the_grid_extremes_of_the_feature_change(tmp_path):
    cfg = get_lam_config("tiny")
    cfg.code_head = "max"
    model = LatentActionModel(cfg, nnx.Rngs(5))
    rng = np.random.default_rng(5)
    first, last = (jnp.asarray(rng.normal(size=(3, 1, 8, 8, cfg.dim)), jnp.float32) for _ in range(2))
    vectors = np.asarray(model.action_vectors(first, last))
    head = model.code_head
    change = np.asarray(last - first)[:, 0]
    extremes = change.max(axis=(1, 2)) + change.min(axis=(1, 2))  # [B, dim]: largest rise + largest fall
    expected = extremes @ np.asarray(head.project.kernel[...])
    np.testing.assert_allclose(vectors, expected.reshape(3, cfg.code_seq_len, cfg.quant_dim), atol=1e-5)
    # no change: the zero vector; swapping the frames' features: the opposite vectors
    np.testing.assert_allclose(np.asarray(model.action_vectors(first, first)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.action_vectors(last, first)), -vectors, atol=1e-5)

    # the same change at any one patch gives the same codes, wherever the patch is
    def changed_at(i: int, j: int) -> np.ndarray:
        moved = np.asarray(first).copy()
        moved[:, :, i, j] += 5.0
        return np.asarray(model.action_vectors(first, jnp.asarray(moved)))

    corner, centre = changed_at(7, 0), changed_at(3, 4)
    np.testing.assert_allclose(corner, centre, atol=1e-5)
    assert np.abs(corner).min() > 1e-3
    # an export keeps the head: the same action vectors and codes after loading
    frames = jnp.asarray(rng.random((2, 2, 64, 64, 3)), jnp.float32)
    loaded = load_lam(save_lam(model, tmp_path / "export"))
    assert isinstance(loaded.code_head, type(head))
    vectors_loaded, vectors_saved = (np.asarray(m.encode_pair(frames)[2]) for m in (loaded, model))
    np.testing.assert_array_equal(vectors_loaded, vectors_saved)
    np.testing.assert_array_equal(np.asarray(loaded.codes(frames)), np.asarray(model.codes(frames)))
    cfg.code_head = "mean"
    with pytest.raises(ValueError, match="code_head"):
        LatentActionModel(cfg, nnx.Rngs(0))
    assert get_lam_config("lapa").code_head == get_lam_config("tiny").code_head == "lapa"
    small = get_lam_config("small")  # measured better than LAPA's heads (BENCHMARKS.md)
    assert (small.code_head, small.motion_kernel) == ("max", 7)


def test_exports_from_before_the_later_options_load_with_them_off(tmp_path):
    cfg = get_lam_config("tiny")
    cfg.match_brightness, cfg.motion_kernel, cfg.difference_embedding = False, 0, False
    model = LatentActionModel(cfg, nnx.Rngs(2))
    out = save_lam(model, tmp_path / "export")
    written = json.loads((out / CONFIG_FILE).read_text())
    for key in ("match_brightness", "motion_kernel", "difference_embedding", "code_head"):
        del written[key]
    (out / CONFIG_FILE).write_text(json.dumps(written))  # as exports written before these options
    loaded = load_lam(out)
    assert loaded.motion is None and loaded.difference_proj is None
    assert loaded.cfg.match_brightness is False and loaded.cfg.code_head == "lapa"
    frames = jnp.asarray(np.random.default_rng(2).random((2, 2, 64, 64, 3)), jnp.float32)
    expected = np.asarray(model.reconstruct(frames))
    np.testing.assert_array_equal(np.asarray(loaded.reconstruct(frames)), expected)


@pytest.mark.parametrize(
    "quantizer, options",
    [("vq_ema", False), ("nsvq", True)],  # a codebook's upkeep; LAPA's quantizer
)
def test_sharded_training_matches_one_device(tmp_path, eight_devices, quantizer, options):
    """Three steps on a dp x fsdp mesh of 8 devices reproduce the single-device losses (with
    ``options``: the motion-kernel decoder, the difference embedding and the max-pool code head)."""
    config = get_config(f"tiny,{quantizer}")
    config.batch_size = 8
    if options:
        config.model.motion_kernel, config.model.difference_embedding, config.model.code_head = 7, True, "max"
    frames = np.random.default_rng(0).random((8, 2, 64, 64, 3)).astype(np.float32)
    frames[:, 1] = np.roll(frames[:, 0], 2, axis=2)

    def losses(mesh_spec: str, devices: list) -> list[float]:
        mesh = make_mesh(mesh_spec, devices)
        optimizer, schedule = build_optimizer(config)
        graphdef, state, shardings = create_train_state(
            lambda rngs: LatentActionModel(config.model, rngs), optimizer, mesh, 0
        )
        batch = global_batch({"frames": frames}, mesh)
        train_step = make_train_step(graphdef, loss_for(config), optimizer, schedule, codebook_upkeep)
        step = compile_step(train_step, state, batch, shardings, mesh)
        out = []
        for _ in range(3):
            state, metrics = step(state, batch)
            out.append(float(metrics["loss"]))
        return out

    single = losses("1,1,1,1", eight_devices[:1])
    sharded = losses("2,4,1,1", eight_devices)
    np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-5)
    assert single[-1] < single[0]


def test_bf16_compute_stays_close_to_fp32():
    cfg32 = get_lam_config("tiny")
    cfg32.predict_residual, cfg32.motion_kernel = False, 0  # the decoder's own output, not the frame
    cfg16 = get_lam_config("tiny")
    cfg16.predict_residual, cfg16.motion_kernel = False, 0
    cfg16.dtype = "bfloat16"
    frames = jnp.asarray(np.random.default_rng(1).random((2, 2, 64, 64, 3)), jnp.float32)
    m32, m16 = LatentActionModel(cfg32, nnx.Rngs(0)), LatentActionModel(cfg16, nnx.Rngs(0))
    r32 = m32.reconstruct(frames, jnp.zeros((2, 4), jnp.int32))
    r16 = m16.reconstruct(frames, jnp.zeros((2, 4), jnp.int32))
    assert r16.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(r32 - r16)))
    assert 0 < err < 0.1


def test_the_default_source_asks_for_the_export_path(export):
    with pytest.raises(ValueError, match=r"tabletop source needs --config\.data\.path: .*make_tabletop"):
        load_pairs(get_config("tiny"))
    episodes, train_pairs, holdout_pairs = load_pairs(_config(export, export=export))
    assert len(episodes) == 12 and all(e.actions is not None for e in episodes)  # the expert's actions
    assert set(train_pairs[:, 0]).isdisjoint(holdout_pairs[:, 0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, export):
    """A tiny run on the tabletop export (30 steps, evaluated at 15 and 30)."""
    tmp = tmp_path_factory.mktemp("lam")
    config = _config(tmp, export=export)
    unread = {"data.image_key": "the rlds source's", "data.image_root": "the jsonl source's"}
    last = run_reading_every_field(config, lambda: train(config), unread)
    return config, last


def test_training_reports_quality_and_exports(trained):
    config, last = trained
    run = config.run_dir
    lines = [json.loads(x) for x in Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    train_losses = [x["train/loss"] for x in lines if "train/loss" in x]
    assert train_losses[-1] < train_losses[0]
    quality = json.loads(Path(f"{run}/quality.json").read_text())
    # every held-out pair (split by episode, capped at eval.max_pairs) is scored, by the codebook
    # statistics and by the probes alike
    _, _, holdout = load_pairs(config)
    expected = min(len(holdout), config.eval.max_pairs)
    assert quality["codebook"]["num_samples"] == quality["probe"]["n_test"] == expected
    # the copy baseline is PSNR(x_t, x_t+H) of those pairs: finite and below the clamp of identical frames
    assert 10 < quality["psnr_copy"] < 100
    assert len(quality["codebook"]["position_usage"]) == 4
    assert {"linear_r2", "mlp_r2", "mi_bits"} <= set(quality["probe"])
    for key in ("eval_psnr_gain", "eval_action_sensitivity", "eval_code_usage", "eval_probe_linear_r2"):
        assert key in last
    for name in ("recon_0000030.png", "same_code_0000030.png", "quality_0000015.json"):
        assert (Path(run) / name).exists(), name
    model = load_lam(run)  # the run directory resolves to its export
    assert model.cfg.dim == config.model.dim


def test_refit_moves_only_the_codes_and_scores_as_training_does(trained, tmp_path, capsys):
    config, _ = trained
    run, out = tmp_path / "run", tmp_path / "export_refit"
    shutil.copytree(config.run_dir, run)  # a run whose data moved: refit is told where it went
    recorded = json.loads((run / "config.json").read_text())
    recorded["data"]["path"] = str(tmp_path / "moved_away")
    (run / "config.json").write_text(json.dumps(recorded))
    (run / "export" / "lam_quality.json").unlink()  # so the trained codebook is scored afresh
    refit_main(["--run", str(run), "--pairs", "128", "--out", str(out), "--data_path", config.data.path])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["codebook"] for r in rows] == ["codebook", "refit"]
    assert rows[1]["fit_distortion"] < rows[0]["fit_distortion"]
    # scored afresh, the trained codebook's row is the run's last evaluation (same pairs, same probes)
    final = json.loads((run / "quality.json").read_text())
    assert rows[0]["psnr_gain"] == pytest.approx(final["psnr_gain"], abs=1e-3)
    assert rows[0]["probe_linear_r2"] == pytest.approx(final["probe"]["linear_r2"], abs=1e-3)
    assert rows[0]["joint_distinct"] == final["codebook"]["joint_distinct"]
    assert (run / "refit" / "refit" / "quality.json").exists()
    before = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(load_lam(run))))[0]
    after = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(load_lam(out))))[0]
    pairs = zip(before, after, strict=True)
    changed = [jax.tree_util.keystr(k) for (k, a), (_, b) in pairs if not np.array_equal(a, b)]
    assert changed == ["['quantizer']['codebook']"]


def test_refit_takes_the_trained_codebooks_score_from_its_export(trained, tmp_path, capsys):
    config, _ = trained
    run = tmp_path / "run"
    shutil.copytree(config.run_dir, run)
    carried = run / "export" / "lam_quality.json"  # training's final evaluation, in the export
    assert json.loads(carried.read_text()) == json.loads((run / "quality.json").read_text())
    marked = {**json.loads(carried.read_text()), "psnr_gain": 123.0}  # a value no evaluation gives
    carried.write_text(json.dumps(marked))
    (run / f"quality_{config.total_steps:07d}.json").unlink()  # the export's copy is what counts
    refit_main(["--run", str(run), "--pairs", "64", "--restarts", "0"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert rows[0]["codebook"] == "codebook" and rows[0]["psnr_gain"] == 123.0
    assert json.loads((run / "refit" / "codebook" / "quality.json").read_text()) == marked
    refit_score = json.loads((run / "refit" / "refit" / "quality.json").read_text())
    assert rows[1]["psnr_gain"] == pytest.approx(refit_score["psnr_gain"], abs=1e-3)  # evaluated
    assert json.loads((run / "export_refit" / "lam_quality.json").read_text()) == refit_score


def test_refit_needs_a_run_with_a_codebook(tmp_path):
    for flag, value in (("--pairs", "0"), ("--restarts", "-1"), ("--iterations", "0")):
        args = {"--pairs": "4096", "--restarts": "16", "--iterations": "50", flag: value}
        with pytest.raises(
            ValueError, match=rf"got {args['--pairs']}, {args['--restarts']}, {args['--iterations']}"
        ):
            refit_main(["--run", str(tmp_path), *[x for item in args.items() for x in item]])
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        refit_main(["--run", str(tmp_path)])
    config = _config(tmp_path, "fsq")
    config.model = get_config("tiny,fsq").model
    (tmp_path / "fsq").mkdir()
    (tmp_path / "fsq" / "config.json").write_text(config.to_json())
    save_lam(LatentActionModel(config.model, nnx.Rngs(0)), tmp_path / "fsq" / "export")
    with pytest.raises(ValueError, match=r"\(fsq\) has no codebook to refit"):
        refit_main(["--run", str(tmp_path / "fsq")])


def _clusters(xs: list[float], size: int) -> np.ndarray:
    """``size`` vectors around each of the points (x, 0), with noise of sd 0.1, cluster after cluster."""
    rng = np.random.default_rng(0)
    return np.concatenate([[x, 0.0] + 0.1 * rng.normal(size=(size, 2)) for x in xs]).astype(np.float32)


def test_kmeans_finds_separated_clusters_and_keeps_an_empty_centroid():
    vectors = _clusters([5.0, -5.0], 50)
    start = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 100.0]], np.float32)  # the third gets no vectors
    fitted = kmeans(vectors, start, iterations=10)
    np.testing.assert_allclose(fitted[:2], [vectors[:50].mean(0), vectors[50:].mean(0)], rtol=1e-5)
    np.testing.assert_array_equal(fitted[2], start[2])
    assert distortion(vectors, fitted) < 0.05 < distortion(vectors, start)


# two codes split the first cluster and one sits between the others: Lloyd's keeps it there
STUCK_START = np.array([[-0.5, 0.0], [0.5, 0.0], [15.0, 0.0]], np.float32)


def test_restarts_leave_the_local_optimum_lloyd_stops_in():
    vectors = _clusters([0.0, 10.0, 20.0], 40)
    stuck = kmeans(vectors, STUCK_START, iterations=20)
    assert distortion(vectors, stuck) > 15  # the third code serves two clusters 10 apart (2/3 * 5^2)
    np.testing.assert_array_equal(best_kmeans(vectors, STUCK_START, 0, 20, np.random.default_rng(1)), stuck)
    fitted = best_kmeans(vectors, STUCK_START, 8, 20, np.random.default_rng(1))
    assert distortion(vectors, fitted) < 0.05  # one code per cluster, each at its mean
    means = [vectors[i * 40 : i * 40 + 40, 0].mean() for i in range(3)]
    np.testing.assert_allclose(np.sort(fitted[:, 0]), means, rtol=1e-4, atol=1e-4)


def test_best_kmeans_keeps_the_least_distortion_fit_and_the_start_on_a_tie(monkeypatch):
    vectors = _clusters([0.0, 10.0, 20.0], 40)
    optimum = kmeans(vectors, vectors[[0, 40, 80]], iterations=20)
    seeds = iter([vectors[[80, 40, 0]], STUCK_START])  # the optimum (codes in another order), then a bad seed
    monkeypatch.setattr("lam.refit.kmeans_plus_plus", lambda *_: next(seeds))
    fitted = best_kmeans(vectors, STUCK_START, 2, 20, np.random.default_rng(0))
    np.testing.assert_allclose(fitted, optimum[::-1], rtol=1e-5)  # the seeding's fit, not the last one
    seeds = iter([vectors[[80, 40, 0]]])
    np.testing.assert_array_equal(best_kmeans(vectors, optimum, 1, 20, np.random.default_rng(0)), optimum)


def test_kmeans_plus_plus_seeds_far_apart():
    vectors = _clusters([0.0, 10.0, 20.0], 40)
    for seed in range(20):  # drawn by squared distance, three seeds land in three clusters
        seeds = kmeans_plus_plus(vectors, 3, np.random.default_rng(seed))
        assert all(any(np.all(seed == vectors, axis=1)) for seed in seeds)  # seeds are data vectors
        assert sorted(np.round(seeds[:, 0] / 10).astype(int)) == [0, 1, 2], seed  # uniform: 2/9 each time


def test_resume_after_kill_reproduces_the_run(tmp_path, monkeypatch, export):
    settings = dict(export=export, total_steps=12, save_every=4, eval_every=0, log_every=4)
    settings.update({"eval.max_pairs": 16, "eval.probe_train_pairs": 32})  # the end-of-run evaluation
    full = _config(tmp_path, "full", **settings)
    train(full)
    killed = _config(tmp_path, "killed", **settings)
    run_killed_at_step(monkeypatch, 7, lambda: train(killed))  # dies asking for step 7's batch
    train(killed)  # resumes from the step-4 checkpoint

    def read(name: str) -> list[dict]:
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines if "train/loss" in json.loads(x)]

    full_losses = {x["step"]: x["train/loss"] for x in read("full")}
    resumed = {x["step"]: x["train/loss"] for x in read("killed")}
    for step in (8, 12):
        assert resumed[step] == pytest.approx(full_losses[step], rel=1e-5)


@pytest.fixture(scope="module")
def tabletop_videos(tmp_path_factory):
    from data.make_tabletop import make_dataset
    from sim.env import EnvConfig

    out = tmp_path_factory.mktemp("tabletop") / "data"
    make_dataset(out, 3, EnvConfig(image_size=64), formats=("videos", "rlds"))
    return out


def test_label_writes_lapa_rows_with_the_models_codes(trained, tabletop_videos, tmp_path):
    config, _ = trained
    out = tmp_path / "latent.jsonl"
    label_main(["--lam", config.run_dir, "--source", "folder", "--path", str(tabletop_videos / "videos"),
                "--out", str(out), "--batch_size", "8"])  # fmt: skip
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    episodes = image_folders(tabletop_videos / "videos")
    assert len(rows) == sum(e.num_frames for e in episodes)  # clamp: every frame gets a row
    assert set(rows[0]) == {"image", "instruction", "delta", "fields"}
    assert rows[0]["fields"] == "[instruction],[vision],delta"
    assert rows[0]["instruction"].startswith("<s> You are a helpful assistant. USER: What action should")
    assert rows[0]["image"] == episodes[0].image_paths[0]
    # the codes are the model's hard codes of (t, t+1), and the last frame pairs with itself
    model = load_lam(config.run_dir)
    pairs = frame_pairs(episodes, 1, tail="clamp")[:8]
    frames = PairBatches(episodes).make_batch(pairs, 64)["frames"]
    expected = np.asarray(model.codes(jnp.asarray(frames)))
    assert [[int(c) for c in r["delta"]] for r in rows[:8]] == expected.tolist()
    last = episodes[0].num_frames - 1
    assert rows[last]["image"] == episodes[0].image_paths[last]
    assert not out.with_name(out.name + ".partial").exists()


def test_label_drop_tail_resume_and_rlds_frames(trained, tabletop_videos, tmp_path, monkeypatch):
    config, _ = trained
    rlds = tabletop_videos / "rlds" / "tabletop" / "1.0.0"
    args = [
        "--lam",
        config.run_dir,
        "--source",
        "rlds",
        "--path",
        str(rlds),
        "--tail",
        "drop",
        "--batch_size",
        "8",
    ]
    full = tmp_path / "full.jsonl"
    label_main([*args, "--out", str(full)])
    rows = full.read_text().splitlines()
    episodes = image_folders(tabletop_videos / "videos")
    assert len(rows) == sum(e.num_frames - 1 for e in episodes)  # drop: no row without t+1
    first = json.loads(rows[0])["image"]
    assert first.startswith(str(full) + ".frames")  # RLDS frames are written as PNG for the rows
    # a run that died after one batch (and a cut line) resumes to the same file ...
    from lam.label import CodeLabeler

    real, calls = CodeLabeler.__call__, []

    def dying(self, frames):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")
        return real(self, frames)

    resumed = tmp_path / "resumed.jsonl"
    partial = resumed.with_name(resumed.name + ".partial")
    with monkeypatch.context() as patch:
        patch.setattr(CodeLabeler, "__call__", dying)
        with pytest.raises(KeyboardInterrupt):
            label_main([*args, "--out", str(resumed)])
    assert len(partial.read_text().splitlines()) == 8
    with open(partial, "a") as f:
        f.write(rows[8][:20])
    # ... but not with another offset, whose codes would differ from the rows already written
    with pytest.raises(SystemExit, match=r"offset: 1 -> 2.*--restart"):
        label_main([*args, "--out", str(resumed), "--offset", "2", "--override_data_settings"])
    label_main([*args, "--out", str(resumed)])
    assert resumed.read_text() == full.read_text().replace(str(full), str(resumed))


def test_label_output_feeds_latent_pretraining(trained, tabletop_videos, tmp_path, sp_model):
    """A labelled row becomes a latent-pretraining example whose latent targets are its codes."""
    from latent_pretraining.sequences import SequenceBuilder, SequenceConfig, TextTokenizer

    config, _ = trained
    out = tmp_path / "latent.jsonl"
    label_main(["--lam", config.run_dir, "--source", "folder", "--path", str(tabletop_videos / "videos"),
                "--out", str(out), "--batch_size", "8"])  # fmt: skip
    row = json.loads(out.read_text().splitlines()[3])
    builder = SequenceBuilder(TextTokenizer(sp_model), SequenceConfig(tokens_per_frame=16))
    row["vision"] = list(range(16))  # stand-in image tokens; the layout, not the image, is tested here
    example = builder(row)
    latent = example.ids[example.modality == 2]
    assert latent.tolist() == [int(c) for c in row["delta"]]
    assert example.loss_mask[example.modality == 2].tolist() == [1.0] * 4


def test_mesh_data_parallel_labeller_matches_plain_model(trained):
    from lam.label import CodeLabeler

    config, _ = trained
    model = load_lam(config.run_dir)
    frames = np.random.default_rng(0).random((11, 2, 64, 64, 3)).astype(np.float32)
    codes = CodeLabeler(model, batch_size=16)(frames)  # 8 devices, padded batch
    assert codes.shape == (11, 4)
    np.testing.assert_array_equal(codes, np.asarray(jax.jit(model.codes)(jnp.asarray(frames))))


def _export_with_data(trained, tmp_path: Path, **settings) -> Path:
    """A copy of the trained export whose recorded data settings are changed by ``settings``
    (a setting ``None`` removes the record, as in an export written before it existed)."""
    import shutil

    config, _ = trained
    export = Path(shutil.copytree(Path(config.run_dir) / "export", tmp_path / "export"))
    record = export / "lam_data.json"
    if None in settings.values():
        record.unlink()
    else:
        record.write_text(json.dumps({**json.loads(record.read_text()), **settings}))
    return export


def _codes(rows: list[str]) -> list[list[int]]:
    return [[int(c) for c in json.loads(r)["delta"]] for r in rows]


def test_export_records_its_data_settings_and_label_defaults_to_them(
    trained, tabletop_videos, tmp_path, monkeypatch, capsys
):
    config, _ = trained
    recorded = json.loads((Path(config.run_dir) / "export" / "lam_data.json").read_text())
    assert recorded == {"source": "tabletop", "offset": 1, "offset_seconds": None, "image_key": None,
                        "image_size": 64}  # fmt: skip
    export = _export_with_data(trained, tmp_path, offset=2)  # as if trained with H = 2 frames
    episodes = image_folders(tabletop_videos / "videos")
    model = load_lam(export)
    frames = PairBatches(episodes).make_batch(frame_pairs(episodes, 2, tail="clamp")[:8], 64)["frames"]
    args = ["--lam", str(export), "--source", "folder", "--path", str(tabletop_videos / "videos"),
            "--batch_size", "8"]  # fmt: skip
    label_main([*args, "--out", str(tmp_path / "h2.jsonl")])  # H comes from the export
    rows = (tmp_path / "h2.jsonl").read_text().splitlines()
    assert _codes(rows[:8]) == np.asarray(model.codes(jnp.asarray(frames))).tolist()
    assert "offset 2 frames" in capsys.readouterr().out
    for flag, value in (("--offset", "1"), ("--offset_seconds", "0.5")):
        with pytest.raises(SystemExit, match=rf"{flag} {value} .* offset 2 .*--override_data_settings"):
            label_main([*args, "--out", str(tmp_path / "h1.jsonl"), flag, value])
    label_main([*args, "--out", str(tmp_path / "h1.jsonl"), "--offset", "1", "--override_data_settings"])
    label_main(["--lam", config.run_dir, *args[2:], "--out", str(tmp_path / "trained_h1.jsonl")])
    assert (tmp_path / "h1.jsonl").read_text() == (tmp_path / "trained_h1.jsonl").read_text().replace(
        "trained_h1", "h1"
    )
    # an export from before the record: today's defaults (H = 1 frame), and a line saying so
    old = _export_with_data(trained, tmp_path / "old", offset=None)
    label_main(["--lam", str(old), *args[2:], "--out", str(tmp_path / "old.jsonl")])
    assert "records no data settings" in capsys.readouterr().out
    assert (tmp_path / "old.jsonl").read_text() == (tmp_path / "h1.jsonl").read_text().replace("h1", "old")
    # the resume record holds the offset the rows were labelled with, the export's
    from lam.label import CodeLabeler

    def killed(self, frames):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(CodeLabeler, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        label_main([*args, "--out", str(tmp_path / "killed.jsonl")])
    manifest = json.loads((tmp_path / "killed.jsonl.partial.json").read_text())
    assert (manifest["provenance"]["offset"], manifest["provenance"]["offset_seconds"]) == (2, None)


def test_label_refuses_an_episode_without_instruction_unless_allowed(trained, tmp_path):
    from PIL import Image

    config, _ = trained
    for episode in ("wave", "silent"):
        (tmp_path / "videos" / episode).mkdir(parents=True)
        for t in range(3):
            Image.fromarray(np.full((64, 64, 3), 60 * t, np.uint8)).save(
                tmp_path / "videos" / episode / f"{t}.png"
            )
    (tmp_path / "videos" / "wave" / "instruction.txt").write_text("wave the arm\n")
    args = ["--lam", config.run_dir, "--source", "folder", "--path", str(tmp_path / "videos"),
            "--out", str(tmp_path / "latent.jsonl")]  # fmt: skip
    with pytest.raises(
        SystemExit, match=r"episode 'silent' has an empty instruction.*--allow_empty_instruction"
    ):
        label_main(args)
    assert not (tmp_path / "latent.jsonl").exists()
    label_main([*args, "--allow_empty_instruction"])
    rows = [json.loads(x) for x in (tmp_path / "latent.jsonl").read_text().splitlines()]
    assert [r["instruction"].split("`")[1] for r in rows] == [""] * 3 + ["wave the arm"] * 3


def test_refit_export_keeps_the_data_settings(trained, tmp_path):
    config, _ = trained
    out = tmp_path / "export_refit"
    refit_main(
        ["--run", config.run_dir, "--pairs", "32", "--restarts", "0", "--iterations", "1", "--out", str(out)]
    )
    recorded = (Path(config.run_dir) / "export" / "lam_data.json").read_text()
    assert json.loads((out / "lam_data.json").read_text()) == json.loads(recorded)
