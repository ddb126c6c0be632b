"""The inference CLI and the policy flags it shares with the server: a bundle or LAPA's flags, the
built-in frame, one JSON line equal to the policy's own answer, errors that name the flag."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from bundles import VQGAN_FILE, vqgan_config, write_action_bundle, write_widened_lapa_fixture
from PIL import Image

from latent_pretraining.actions.spec import ACTION_NAMES, ACTION_UNITS
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.episodes import load_image
from latent_pretraining.inference import main as inference_main
from latent_pretraining.policy.bundle import bundle_from_lapa
from latent_pretraining.policy.cli import lapa_model_config, parse_lapa_dict
from latent_pretraining.policy.inputs import BUILT_IN_FRAME, BUILT_IN_INSTRUCTION
from latent_pretraining.policy.policy import Policy

LAPA_DEPLOY_UPDATE = (  # LAPA's deploy.py default, as its users pass it
    "dict(action_vocab_size=256,delta_vocab_size=8,sample_mode='text',theta=50000000,"
    "max_sequence_length=32768,scan_attention=False,scan_query_chunk_size=128,scan_key_chunk_size=128,"
    "scan_mlp=False,scan_mlp_chunk_size=8192,scan_layers=True)"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, sp_model):
    return write_action_bundle(tmp_path_factory.mktemp("inference"), sp_model)[0]


@pytest.fixture(scope="module")
def in_process(bundle):
    return Policy.from_pretrained(bundle.directory, make_mesh("1,1,1,1", devices=jax.devices()[:1]))


def _json_line(capsys, argv):
    inference_main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_the_built_in_frame_gives_the_policys_own_answer(bundle, in_process, capsys):
    record = _json_line(capsys, ["--policy", str(bundle.directory), "--json"])
    assert record["instruction"] == BUILT_IN_INSTRUCTION and record["image"] == str(BUILT_IN_FRAME)
    frame = load_image(BUILT_IN_FRAME)
    expected = in_process.act([frame], [BUILT_IN_INSTRUCTION])
    np.testing.assert_array_equal(record["action"], expected.actions[0])
    np.testing.assert_array_equal(record["action_tokens"], expected.action_tokens[0])
    assert record["latent"] is None and record["predicts"] == "action"
    assert record["action_names"] == list(ACTION_NAMES) and record["action_units"] == list(ACTION_UNITS)
    assert set(record["timing_s"]) == {"preprocess", "image_tokenizer", "generation"}


def test_an_image_file_and_instruction_print_every_dimension_with_its_unit(
    bundle, in_process, tmp_path, capsys
):
    pixels = np.random.default_rng(2).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    argv = [
        "--policy",
        str(bundle.directory),
        "--image",
        str(tmp_path / "frame.png"),
        "--instruction",
        "push",
    ]
    inference_main(argv)
    text = capsys.readouterr().out
    action = in_process.sample_action([pixels], ["push"])[0]
    for name, value, unit in zip(ACTION_NAMES, action, ACTION_UNITS, strict=True):
        assert f"{name} {value:+.4f} {unit}" in " ".join(text.split())
    record = _json_line(capsys, [*argv, "--json"])
    np.testing.assert_array_equal(record["action"], action)


def test_lapas_flags_load_its_files_without_copying_them(tmp_path, sp_model, capsys):
    write_widened_lapa_fixture(tmp_path)
    (tmp_path / "vqgan_config.json").write_text(vqgan_config().to_json())
    (tmp_path / "vqgan").symlink_to(VQGAN_FILE)  # resolve_config reads the JSON beside the pickle
    argv = [
        "--load_checkpoint",
        f"params::{tmp_path / 'params'}",
        "--vqgan_checkpoint",
        str(tmp_path / "vqgan"),
        "--vocab_file",
        str(sp_model),
        "--load_llama_config",
        str(tmp_path / "config.json"),
        "--json",
    ]
    record = _json_line(capsys, argv)
    assert record["predicts"] == "latent" and record["action"] is None
    reference = bundle_from_lapa(
        tmp_path / "params",
        VQGAN_FILE,
        sp_model,
        None,
        tmp_path / "copy",
        tmp_path / "config.json",
        vqgan_config=vqgan_config(),
    )
    policy = Policy.from_pretrained(reference.directory, make_mesh("1,1,1,1", devices=jax.devices()[:1]))
    expected = policy.sample_latent([load_image(BUILT_IN_FRAME)], [BUILT_IN_INSTRUCTION])[0]
    assert record["latent"] == expected.tolist()
    inference_main(argv[:-1])
    assert "action: none (a latent-only policy without a latent-to-action decoder)" in capsys.readouterr().out


def test_missing_or_conflicting_flags_are_named(bundle, tmp_path):
    with pytest.raises(SystemExit, match="missing --vqgan_checkpoint, --vocab_file"):
        inference_main(["--load_checkpoint", "params::x"])
    with pytest.raises(SystemExit, match="not both"):
        inference_main(["--policy", str(bundle.directory), "--load_checkpoint", "params::x"])
    with pytest.raises(SystemExit, match=r"nothing\.params: no such file \(--load_checkpoint\)"):
        inference_main(
            [
                "--load_checkpoint",
                f"params::{tmp_path / 'nothing.params'}",
                "--vqgan_checkpoint",
                "v",
                "--vocab_file",
                "t",
            ]
        )
    with pytest.raises(SystemExit, match=r"policy\.json: missing"):
        inference_main(["--policy", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"cannot read image .*absent\.png"):
        inference_main(
            ["--policy", str(bundle.directory), "--image", str(tmp_path / "absent.png"), "--instruction", "x"]
        )
    with pytest.raises(SystemExit, match="--instruction is required with --image"):
        inference_main(["--policy", str(bundle.directory), "--image", str(BUILT_IN_FRAME)])
    with pytest.raises(SystemExit, match="instruction 0: expected a task description"):
        inference_main(["--policy", str(bundle.directory), "--instruction", "  "])


def test_lapas_update_string_sets_our_fields():
    assert parse_lapa_dict("dict(a=1, b='x', c=True)") == {"a": 1, "b": "x", "c": True}
    assert parse_lapa_dict("") == {}
    config = lapa_model_config("7b", LAPA_DEPLOY_UPDATE)
    assert (config.action_vocab_size, config.latent_vocab_size) == (256, 8)
    assert (config.rope_theta, config.max_sequence_length) == (50_000_000, 32768)
    assert config.hidden_size == 4096 and config.num_layers == 32
    with pytest.raises(ValueError, match="unknown key 'delta_size'"):
        lapa_model_config("7b", "dict(delta_size=8)")
    for bad in ("{'a': 1}", "dict(1)", "dict(a=foo())", "dict(a="):
        with pytest.raises(ValueError, match="expected dict"):
            parse_lapa_dict(bad)


def test_lapas_finetuned_files_act_through_their_bins_csv_alone(tmp_path, sp_model, capsys):
    from latent_pretraining.actions.bins import ActionBins
    from latent_pretraining.policy.__main__ import main as policy_main
    from latent_pretraining.policy.bundle import read_bundle

    write_widened_lapa_fixture(tmp_path)  # its action vocabulary has 32 ids
    (tmp_path / "vqgan_config.json").write_text(vqgan_config().to_json())
    (tmp_path / "vqgan").symlink_to(VQGAN_FILE)
    edges = [np.linspace(-0.01 * (d + 1), 0.01 * (d + 1), 9) for d in range(6)] + [np.array([-0.5, 0.5, 1.5])]
    ActionBins(edges).to_csv(tmp_path / "bins.csv")  # LAPA's CSV, no statistics JSON beside it
    lapa = [
        "--vqgan_checkpoint",
        str(tmp_path / "vqgan"),
        "--load_llama_config",
        str(tmp_path / "config.json"),
    ]
    argv = ["--load_checkpoint", f"params::{tmp_path / 'params'}", *lapa, "--json"]
    argv += ["--vocab_file", str(sp_model), "--action_scale_file", str(tmp_path / "bins.csv")]
    record = _json_line(capsys, argv)
    assert record["predicts"] == "action" and len(record["action"]) == 7
    for value, dim_edges in zip(record["action"], edges, strict=True):
        assert dim_edges[0] <= value <= dim_edges[-1]
    policy_main(["lapa", "--params", f"params::{tmp_path / 'params'}", "--vqgan", str(tmp_path / "vqgan"),
                 "--tokenizer", str(sp_model), "--config", str(tmp_path / "config.json"),
                 "--bins", str(tmp_path / "bins.csv"), "--out", str(tmp_path / "bundle")])  # fmt: skip
    assert "predicts action" in capsys.readouterr().out
    bundle = read_bundle(tmp_path / "bundle")
    assert bundle.statistics is None and bundle.bins.num_bins == [8] * 6 + [2]
