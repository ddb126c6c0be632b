"""The policy bundle and the policy: round trip, refused disagreements, training-identical prompts and
vision tokens, constrained actions in the data's units, LAPA's files, SIMPLER's step fields."""

from __future__ import annotations

import argparse
import json
import math
import shutil

import jax
import numpy as np
import pytest
from bundles import (
    BINS_PER_DIM,
    VQGAN_FILE,
    model_config,
    vqgan_config,
    write_action_bundle,
    write_bins,
    write_widened_lapa_fixture,
)
from conftest import LAPA_VLA_FIXTURE
from flax import nnx
from PIL import Image

from latent_pretraining.actions.bins import ActionBins
from latent_pretraining.actions.decoder import ActionDecoder, save_decoder
from latent_pretraining.config import from_lapa_config
from latent_pretraining.configs.action_decoder import get_config as get_decoder_config
from latent_pretraining.configs.lapa import get_config
from latent_pretraining.core.checkpointing import Checkpointer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.episodes import load_image
from latent_pretraining.lapa_checkpoint import load_lapa_params
from latent_pretraining.model import Modality
from latent_pretraining.policy.__main__ import main as policy_main
from latent_pretraining.policy.bundle import (
    LAPA_TEMPLATE,
    BundleError,
    bundle_from_lapa,
    bundle_from_run,
    read_bundle,
    write_bundle,
)
from latent_pretraining.policy.cli import add_policy_arguments, policy_from_arguments
from latent_pretraining.policy.policy import Policy, Sampling, euler_to_axangle
from latent_pretraining.prompts import ACTION_FIELDS, LATENT_FIELDS, lapa_instruction
from latent_pretraining.sampler import Sampler
from latent_pretraining.sequences import SequenceBuilder, SequenceConfig, TextTokenizer
from latent_pretraining.vla_data import ImageTokens, load_examples
from latent_pretraining.vqgan.encode import load_row_encoder

TASK = "push the cube"


def _images(rng, shapes=((48, 80, 3), (64, 64, 4))):
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]


@pytest.fixture(scope="module")
def one_device():
    return make_mesh("1,1,1,1", devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def written(tmp_path_factory, sp_model):
    """An action bundle of a random debug model, and that model."""
    return write_action_bundle(tmp_path_factory.mktemp("bundle"), sp_model)


@pytest.fixture(scope="module")
def policy(written, one_device):
    return Policy.from_pretrained(written[0].directory, mesh=one_device)


def _rewrite(bundle, sp_model):
    """``write_bundle``'s arguments for another bundle of the same model (no bins, no decoder)."""
    return dict(
        model_config=bundle.model,
        params=bundle.path("params"),
        tokenizer=sp_model,
        vqgan=VQGAN_FILE,
        vqgan_config=bundle.vqgan,
        image_mode="center_crop",
        tokens_per_frame=64,
    )


def _flat_params(model):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
    fa, fb = _flat_params(a), _flat_params(b)
    assert fa.keys() == fb.keys()
    for key, value in fa.items():
        np.testing.assert_array_equal(value, fb[key], err_msg=str(key))


def test_bundle_round_trip_keeps_params_and_settings(written, tmp_path, sp_model, one_device):
    bundle, model = written
    read = read_bundle(bundle.directory)
    _assert_same_params(load_lapa_params(read.path("params"), read.model, mesh=one_device), model)
    assert read.model.to_dict() == model_config().to_dict()
    assert read.sequence.tokens_per_frame == 64 and read.sequence.vision_codes == 64
    assert read.sequence.action_bins == BINS_PER_DIM and read.bins.num_bins == list(BINS_PER_DIM)
    assert read.image_mode == "center_crop" and read.spec["image"]["resolution"] == 64
    assert read.prompt_template == LAPA_TEMPLATE and read.predicts == "action"
    assert read.spec["action"]["names"][-1] == "gripper" and read.spec["action"]["units"][0] == "m"
    assert read.spec["provenance"]["step"] == 7 and read.statistics["gripper"]["convention"] == "01"
    assert read.vqgan.to_dict() == json.loads(vqgan_config().to_json())
    assert read.tokenizer_size == TextTokenizer(sp_model).vocab_size

    # a failed write leaves the previous bundle as it was and no temporary directory beside it
    copy = tmp_path / "policy"
    shutil.copytree(bundle.directory, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    with pytest.raises(BundleError, match=r"bins.csv: a dimension has 300 bins.*action_vocab_size 64"):
        ActionBins([np.linspace(0, 1, 301)] * 7).to_csv(tmp_path / "wide.csv")
        write_bundle(copy, bins_csv=tmp_path / "wide.csv", **_rewrite(read, sp_model))
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "wide.csv"]
    # a directory that is not a bundle is never replaced
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(BundleError, match="is not a policy bundle"):
        write_bundle(tmp_path / "run", **_rewrite(read, sp_model))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.json"]


def _edit_json(path, edit):
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: ActionBins([np.linspace(0, 1, 70)] * 7).to_csv(d / "bins.csv"), r"bins.csv: .* 69 bins"),
        (lambda d: ActionBins([np.linspace(0, 1, 5)] * 6).to_csv(d / "bins.csv"), r"bins.csv: 6 rows"),
        (
            lambda d: _edit_json(d / "vqgan" / "vqgan_config.json", lambda c: c.update(resolution=32)),
            r"vqgan_config.json: a 4x4 grid is 16 tokens per image.*tokens_per_frame 64",
        ),
        (
            lambda d: _edit_json(d / "vqgan" / "vqgan_config.json", lambda c: c.update(num_embeddings=9000)),
            r"vqgan_config.json: a codebook of 9000 codes",
        ),
        (
            lambda d: _edit_json(d / "policy.json", lambda s: s["model"].update(text_vocab_size=100)),
            r"tokenizer.model: 160 tokens, but .*policy.json has model.text_vocab_size 100",
        ),
        (
            lambda d: _edit_json(d / "policy.json", lambda s: s["model"].update(vision_vocab_size=96)),
            r"policy.json: model.vision_vocab_size 96 has no end-of-vision id",
        ),
        (
            lambda d: _edit_json(d / "policy.json", lambda s: s["model"].update(vision_grid=3)),
            r"policy.json: model.vision_grid 3 lays out 9 codes per frame; the frames have 64",
        ),
        (lambda d: (d / "params").unlink(), r"params: missing"),
        (lambda d: (d / "bins.csv").unlink(), r"bins.csv: missing"),
    ],
)
def test_a_disagreeing_piece_is_refused_naming_its_file(written, tmp_path, change, message):
    copy = tmp_path / "policy"
    shutil.copytree(written[0].directory, copy, ignore=shutil.ignore_patterns("params"))
    (copy / "params").write_bytes(b"")  # read_bundle does not read the parameters
    change(copy)
    with pytest.raises(BundleError, match=message):
        read_bundle(copy)


def _training_builder(bundle, sp_model):
    """The builder ``latent_pretraining.train`` makes for this model, VQGAN and bins."""
    m = bundle.model
    return SequenceBuilder(
        TextTokenizer(sp_model),
        SequenceConfig(
            tokens_per_frame=64,
            vocab_sizes=(m.text_vocab_size, m.vision_vocab_size, m.latent_vocab_size, m.action_vocab_size),
            vision_codes=64,
            action_bins=BINS_PER_DIM,
        ),
    )


@pytest.mark.parametrize(
    "vocab,key,fields,codes",
    [("latent", "delta", LATENT_FIELDS, [1, 2, 3, 4]), ("action", "action", ACTION_FIELDS, [1] * 7)],
)
def test_the_prompt_is_the_training_example_up_to_its_first_target(
    policy, written, sp_model, vocab, key, fields, codes
):
    image = _images(np.random.default_rng(0))[0]
    [(ids, modality)] = policy.prompts(policy.vision_tokens([image]), [TASK], vocab)
    vision = policy.vision_tokens([image])[0].tolist()
    row = {"instruction": lapa_instruction(TASK), "vision": vision, key: codes, "fields": fields}
    example = _training_builder(written[0], sp_model)(row)
    n = len(ids)
    assert ids.tolist() == example.ids[:n].tolist() and modality.tolist() == example.modality[:n].tolist()
    assert (
        example.modality[n] == Modality[vocab.upper()] and (example.modality[:n] != example.modality[n]).all()
    )


def test_a_training_frame_and_the_same_frame_sent_to_the_policy_give_the_same_tokens(
    policy, written, tmp_path, sp_model
):
    rng = np.random.default_rng(1)
    pictures = {
        "rgb.png": rng.integers(0, 256, (48, 80, 3), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (70, 50, 4), dtype=np.uint8),
        "grey.png": rng.integers(0, 256, (40, 40), dtype=np.uint8),
    }
    rows = []
    for name, pixels in pictures.items():
        Image.fromarray(pixels).save(tmp_path / name)
        rows.append(
            {
                "image": name,
                "instruction": lapa_instruction(TASK),
                "delta": [1, 2, 3, 4],
                "fields": LATENT_FIELDS,
            }
        )
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # training's held-out path (pp_eval center_crop) with the bundle's VQGAN and the config beside it
    held_out = ImageTokens(load_row_encoder(written[0].path("vqgan/vqgan"), None, tmp_path), "center_crop")
    data = load_examples(
        [tmp_path / "rows.jsonl"], _training_builder(written[0], sp_model), 200, images=held_out
    )
    assert load_image(tmp_path / "rgba.png").shape == (70, 50, 3)
    got = policy.vision_tokens(list(pictures.values()))  # the raw arrays: RGBA and greyscale as they are
    assert got.shape == (3, 64)
    assert [r["vision"] for r in data.rows] == got.tolist()
    with pytest.raises(ValueError, match="image 0: expected uint8"):
        policy.vision_tokens([np.zeros((8, 8, 3), np.float32)])


def test_sample_action_gives_bin_centres_of_valid_bins(policy, written):
    bundle = written[0]
    images = _images(np.random.default_rng(2))
    actions = policy.sample_action(images, [TASK, "pick up the red cube"])
    assert actions.shape == (2, 7) and actions.dtype == np.float64
    for d, centres in enumerate(bundle.bins.centres):
        assert all(np.isclose(centres, a).any() for a in actions[:, d]), (d, actions[:, d])
        assert (np.abs(actions[:, d]) <= bundle.bins.edges[d][-1] + 1e-9).all()  # the data's units
    free = policy.sampler.generate_batch(
        policy.prompts(policy.vision_tokens(images), [TASK, "pick up the red cube"], "action"),
        vocab="action",
        num_tokens=7,
    )
    assert (free >= np.asarray(BINS_PER_DIM)).any()  # unconstrained, the random head picks ids no bin has


def test_sample_latent_gives_codes_of_the_latent_vocabulary(policy):
    images = _images(np.random.default_rng(3))
    codes = policy.sample_latent(images, [TASK, TASK])
    assert codes.shape == (2, 4) and np.issubdtype(codes.dtype, np.integer)
    assert ((codes >= 0) & (codes < 8)).all()
    np.testing.assert_array_equal(codes, policy.sample_latent(images, [TASK, TASK]))  # greedy


def test_euler_to_axangle():
    np.testing.assert_allclose(euler_to_axangle(0.3, 0.0, 0.0), [0.3, 0, 0], atol=1e-12)
    np.testing.assert_allclose(euler_to_axangle(0.0, 0.0, math.pi / 2), [0, 0, math.pi / 2], atol=1e-12)
    np.testing.assert_allclose(euler_to_axangle(0.0, 0.0, 0.0), [0, 0, 0])

    def rotation(axis, angle):
        c, s = math.cos(angle), math.sin(angle)
        i, j = ((1, 2), (2, 0), (0, 1))[axis]  # the plane it turns, in the right-handed order
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    for roll, pitch, yaw in np.random.default_rng(0).uniform(-math.pi, math.pi, (20, 3)):
        expected = rotation(2, yaw) @ rotation(1, pitch) @ rotation(0, roll)
        v = euler_to_axangle(roll, pitch, yaw)
        angle = np.linalg.norm(v)
        k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]]) / angle
        rodrigues = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
        np.testing.assert_allclose(rodrigues, expected, atol=1e-9)
        assert angle <= math.pi + 1e-12


def test_step_gives_simpler_fields(policy):
    image = _images(np.random.default_rng(4))[0]
    policy.instruction = None
    with pytest.raises(RuntimeError, match="reset"):
        policy.step(image)
    policy.reset(TASK)
    out = policy.step(image)
    action = policy.sample_action([image], [TASK])[0]
    np.testing.assert_array_equal(out["action"], action)
    np.testing.assert_array_equal(out["world_vector"], action[:3])
    np.testing.assert_allclose(out["rot_axangle"], euler_to_axangle(*action[3:6]))
    assert out["gripper"].tolist() == [action[6]] and out["gripper"][0] in (0.0, 1.0)
    assert out["terminate_episode"].tolist() == [0.0]


def test_a_bundle_of_lapa_files_samples_what_the_sampler_generates(tmp_path, sp_model, one_device):
    with pytest.raises(BundleError, match="vision_vocab_size 96 has no end-of-vision id"):
        bundle_from_lapa(
            LAPA_VLA_FIXTURE / "params",
            VQGAN_FILE,
            sp_model,
            None,
            tmp_path / "refused",
            LAPA_VLA_FIXTURE / "config.json",
            vqgan_config=vqgan_config(),
        )
    assert not (tmp_path / "refused").exists()
    write_widened_lapa_fixture(tmp_path)
    bundle = bundle_from_lapa(
        f"params::{tmp_path / 'params'}",
        VQGAN_FILE,
        sp_model,
        None,
        tmp_path / "lapa",
        tmp_path / "config.json",
        vqgan_config=vqgan_config(),
    )
    assert bundle.predicts == "latent" and bundle.bins is None and bundle.image_mode == "center_crop"
    assert bundle.path("params").read_bytes() == (tmp_path / "params").read_bytes()
    policy = Policy.from_pretrained(bundle.directory, mesh=one_device)
    images, tasks = _images(np.random.default_rng(5)), [TASK, "pick up the red cube"]
    model = load_lapa_params(tmp_path / "params", from_lapa_config(tmp_path / "config.json"), mesh=one_device)
    expected = Sampler(model).generate_batch(
        policy.prompts(policy.vision_tokens(images), tasks, "latent"), vocab="latent", num_tokens=4
    )
    np.testing.assert_array_equal(policy.sample_latent(images, tasks), expected)
    with pytest.raises(ValueError, match="latent codes only and the bundle has no latent-to-action decoder"):
        policy.sample_action(images, tasks)
    # LAPA's loose files load straight away, linked, not copied
    loose = Policy.from_pretrained(
        f"params::{tmp_path / 'params'}",
        one_device,
        vqgan=VQGAN_FILE,
        tokenizer=sp_model,
        model_config=tmp_path / "config.json",
        vqgan_config=vqgan_config(),
    )
    assert (
        loose.bundle.path("params").is_symlink()
        and loose.bundle.path("params").resolve() == tmp_path / "params"
    )
    np.testing.assert_array_equal(loose.sample_latent(images, tasks), expected)
    with pytest.raises(ValueError, match="go with a params:: file"):
        Policy.from_pretrained(bundle.directory, one_device, vqgan=VQGAN_FILE)


def test_a_latent_bundle_acts_through_its_decoder(written, tmp_path, sp_model, one_device):
    bundle = written[0]
    settings = _rewrite(bundle, sp_model)
    cfg = get_decoder_config().model
    cfg.hidden_dim, cfg.num_layers = 16, 1
    save_decoder(ActionDecoder(cfg, rngs=nnx.Rngs(0)), cfg, tmp_path / "decoder")
    made = write_bundle(tmp_path / "latent", decoder=tmp_path / "decoder", **settings)
    policy = Policy.from_pretrained(made.directory, mesh=one_device)
    images = _images(np.random.default_rng(6))
    codes = policy.sample_latent(images, [TASK, TASK])
    actions = policy.sample_action(images, [TASK, TASK])
    np.testing.assert_allclose(actions, np.asarray(policy.decoder.predict(codes)), rtol=1e-6)
    assert actions.shape == (2, 7) and set(actions[:, 6]) <= {0.0, 1.0}
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    with pytest.raises(ValueError, match=r"--median: .*latent predicts latent codes, not action bins"):
        policy_from_arguments(parser.parse_args(["--policy", str(made.directory), "--median"]), one_device)
    cfg.codebook_size = 16
    save_decoder(ActionDecoder(cfg, rngs=nnx.Rngs(0)), cfg, tmp_path / "wide")
    with pytest.raises(
        BundleError, match=r"decoder/config.json: decodes 4 codes of 16, but the model predicts 4 of 8"
    ):
        write_bundle(tmp_path / "refused", decoder=tmp_path / "wide", **settings)


def test_a_bundle_from_a_training_run(tmp_path, written, sp_model, one_device, capsys):
    bundle, model = written
    run = tmp_path / "run"
    run.mkdir()
    write_bins(tmp_path)
    (tmp_path / "vqgan_config.json").write_text(vqgan_config().to_json())
    config = get_config("debug_finetune")
    config.model = model_config()
    config.data.update(
        train="train.jsonl",
        tokenizer=str(sp_model),
        vqgan_checkpoint=str(VQGAN_FILE),
        tokens_per_frame=64,
        vqgan_config=str(tmp_path / "vqgan_config.json"),
        pp_train="augment",
        action_bins=str(tmp_path / "bins.csv"),
    )
    config.run_dir = str(run)
    (run / "config.json").write_text(config.to_json())
    (run / "summary.json").write_text(json.dumps({"eval_action_mae": 0.25}))
    checkpointer = Checkpointer(run, async_save=False)
    checkpointer.maybe_save(5, {"params": nnx.state(model, nnx.Param)}, {}, force=True)
    checkpointer.close()
    made = bundle_from_run(run, tmp_path / "policy", mesh=one_device)
    _assert_same_params(load_lapa_params(made.path("params"), made.model, mesh=one_device), model)
    assert made.spec["provenance"]["step"] == 5 and made.spec["provenance"]["metrics"] == {
        "eval_action_mae": 0.25
    }
    assert made.spec["provenance"]["dataset"] == "train.jsonl"
    assert made.image_mode == "center_crop"  # the deterministic counterpart of the run's augmentation
    assert made.predicts == "action" and made.bins.num_bins == list(BINS_PER_DIM)
    assert made.statistics["gripper"]["threshold"] == 0.5
    assert made.spec["sequence"] == bundle.spec["sequence"] and made.model.to_dict() == bundle.model.to_dict()

    # the command line writes the same bundle, and a directory that is no run is a one-line error
    policy_main(["export", "--run", str(run), "--out", str(tmp_path / "cli")])
    assert "predicts action; 64px images (center_crop), 64 tokens per frame" in capsys.readouterr().out
    assert (tmp_path / "cli" / "params").read_bytes() == made.path("params").read_bytes()
    assert read_bundle(tmp_path / "cli").spec["provenance"] == made.spec["provenance"]
    with pytest.raises(SystemExit, match=r"error: .*nothing/config.json: missing"):
        policy_main(["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "cli2")])


def test_training_writes_a_bundle_equal_to_the_one_exported_afterwards(tmp_path, sp_model, one_device):
    from latent_pretraining import train as vla_train

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    with open(tmp_path / "train.jsonl", "w") as f:
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                tmp_path / "images" / f"{i}.png"
            )
            action = [int(rng.integers(n)) for n in BINS_PER_DIM]
            f.write(
                json.dumps(
                    {"image": f"{i}.png", "instruction": TASK, "action": action, "fields": ACTION_FIELDS}
                )
            )
            f.write("\n")
    write_bins(tmp_path)
    (tmp_path / "vqgan_config.json").write_text(vqgan_config().to_json())
    (tmp_path / "vqgan").symlink_to(VQGAN_FILE)
    config = get_config("debug_finetune")
    config.model = model_config()
    config.data.update(
        train=str(tmp_path / "train.jsonl"),
        tokenizer=str(sp_model),
        vqgan_checkpoint=str(tmp_path / "vqgan"),
        image_root=str(tmp_path / "images"),
        tokens_per_frame=64,
        max_length=128,
        action_bins=str(tmp_path / "bins.csv"),
    )
    config.update(
        run_dir=str(tmp_path / "run"),
        batch_size=8,
        total_steps=2,
        eval_every=0,
        export_policy=str(tmp_path / "policy"),
    )
    vla_train.train(config)
    exported = read_bundle(tmp_path / "policy")
    assert exported.predicts == "action" and exported.spec["provenance"]["step"] == 2
    assert exported.statistics["gripper"]["threshold"] == 0.5  # bins.json travelled with bins.csv
    afterwards = bundle_from_run(tmp_path / "run", tmp_path / "afterwards", mesh=one_device)
    assert exported.path("params").read_bytes() == afterwards.path("params").read_bytes()
    assert Policy.from_pretrained(exported.directory, mesh=one_device).sample_action(
        [np.asarray(Image.open(tmp_path / "images" / "0.png"))], [TASK]
    ).shape == (1, 7)


def test_sampling_is_reproducible_constrained_and_top_1_is_greedy(policy):
    images, tasks = _images(np.random.default_rng(8)), [TASK, "pick up the red cube"]
    greedy = policy.sample_action(images, tasks)
    top_1 = policy.sample_action(images, tasks, Sampling(temperature=1.0, top_k=1, rng=jax.random.key(0)))
    np.testing.assert_array_equal(top_1, greedy)
    hot = [Sampling(temperature=5.0, rng=jax.random.key(seed)) for seed in range(4)]
    drawn = [policy.act(images, tasks, s).action_tokens for s in hot]
    np.testing.assert_array_equal(policy.act(images, tasks, hot[0]).action_tokens, drawn[0])  # same key
    assert len({d.tobytes() for d in drawn}) > 1  # different keys, different draws
    for tokens in drawn:
        assert (tokens < np.asarray(BINS_PER_DIM)).all()  # still only ids a bin can decode
    with pytest.raises(ValueError, match="needs an explicit rng key"):
        policy.sample_action(images, tasks, Sampling(temperature=1.0))


def test_median_flag_makes_every_call_take_each_dimensions_median_bin(written, policy, one_device):
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    median = policy_from_arguments(
        parser.parse_args(["--policy", str(written[0].directory), "--median"]), one_device
    )
    images, tasks = _images(np.random.default_rng(9)), [TASK, "pick up the red cube"]
    tokens = median.act(images, tasks).action_tokens
    prompts = policy.prompts(policy.vision_tokens(images), tasks, "action")
    allowed = policy.bundle.bins.valid_ids(policy.bundle.model.action_vocab_size)
    expected = policy.sampler.generate_batch(
        prompts, vocab="action", num_tokens=7, allowed_tokens=allowed, median=True
    )
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(policy.act(images, tasks, Sampling(median=True)).action_tokens, expected)
    assert not np.array_equal(policy.act(images, tasks).action_tokens, expected)  # default: argmax
    median.reset(TASK)  # SIMPLER-style steps take the median too
    np.testing.assert_array_equal(median.step(images[0])["action"], policy.bundle.bins.decode(expected)[0])


def test_one_string_of_instructions_is_refused_not_split_into_letters(policy):
    images = _images(np.random.default_rng(9), ((8, 8, 3),) * 4)
    with pytest.raises(ValueError, match="expected a list of task descriptions, not 'push'"):
        policy.sample_latent(images, "push")
    with pytest.raises(ValueError, match="expected a list of task descriptions"):
        policy.act(images, "push")


def test_export_policy_is_checked_before_the_run(tmp_path, sp_model):
    from latent_pretraining import train as vla_train

    config = get_config("debug_finetune")
    config.data.update(train="unread.jsonl", tokenizer=str(sp_model))
    config.update(run_dir=str(tmp_path / "run"), export_policy=str(tmp_path / "policy"))
    with pytest.raises(BundleError, match=r"no data\.vqgan_checkpoint to put in the bundle"):
        vla_train.train(config)
    config.data.vqgan_checkpoint = str(VQGAN_FILE)
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a policy bundle"):
        vla_train.train(config)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
