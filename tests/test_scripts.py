"""The demo and the benchmark scripts run end to end and report what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from flax import nnx

from lam.checkpoint import save_lam
from lam.model import LatentActionModel, get_lam_config


def _run(args: list[str], tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, like a user
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_demo_learns_latent_codes_and_round_trips_the_checkpoint(tmp_path):
    stdout = _run(
        ["-m", "latent_pretraining.demo", "--steps", "200", "--out", str(tmp_path / "out")], tmp_path
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["last_loss"] < 0.6 * summary["first_loss"]
    assert summary["accuracy"] > 3 * summary["chance"]
    assert (tmp_path / "out" / "params").stat().st_size > 0
    assert "held-out latent-code accuracy" in stdout


def test_bench_vla_reports_training_and_generation(tmp_path):
    stdout = _run(
        [
            str(REPO_ROOT / "benchmarks" / "bench_vla.py"),
            f"--config={REPO_ROOT / 'latent_pretraining/configs/vla.py'}:debug",
            "--config.model.vision_vocab_size=512",
            "--batch=2",
            "--seq_len=64",
            "--steps=2",
            "--prompt_len=40",
            "--gen_repeats=1",
        ],
        tmp_path,
    )
    rows = _json_lines(stdout)
    train = [r for r in rows if r["kind"] == "train_step"]
    gen = [r for r in rows if r["kind"] == "generate"]
    assert len(train) == 1 and train[0]["tokens_per_s"] > 0 and train[0]["tflops_per_s"] > 0
    assert train[0]["mfu"] is None  # CPUs have no peak figure
    assert {(r["vocab"], r["new_tokens"], r["batch"]) for r in gen} == {
        ("latent", 4, 1),
        ("action", 7, 1),
        ("latent", 4, 8),
        ("action", 7, 8),
    }
    assert all(r["latency_ms"] > 0 for r in gen)
    assert "memory report before step 0" in stdout


def test_bench_attention_reports_xla(tmp_path):
    rows = _json_lines(
        _run(
            [
                str(REPO_ROOT / "benchmarks" / "bench_attention.py"),
                "--seq_len=64",
                "--batch=2",
                "--repeats=1",
            ],
            tmp_path,
        )
    )
    assert [r["backend"] for r in rows] == ["xla"]
    assert rows[0]["finite"] and rows[0]["max_abs_logit_diff_vs_xla"] == 0.0


def test_lam_decoder_ceiling_reports_each_evaluation_and_beats_copying(tmp_path):
    script = str(REPO_ROOT / "benchmarks" / "bench_lam_decoder_ceiling.py")
    args = ["--steps=20", "--eval_every=10", "--episodes=6", "--eval_pairs=64"]
    rows = _json_lines(_run([script, *args], tmp_path))
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[-1]["psnr_gain"] > 0  # the decoder starts exactly at copying x_t and improves on it


def test_lam_encoder_ceiling_reports_each_evaluation_and_learns_the_motion(tmp_path):
    script = str(REPO_ROOT / "benchmarks" / "bench_lam_encoder_ceiling.py")
    args = ["--steps=40", "--eval_every=20", "--episodes=8", "--eval_pairs=64", "--lr=3e-3"]
    args.append("--model=code_head=max")
    rows = _json_lines(_run([script, *args], tmp_path))
    assert [r["step"] for r in rows] == [20, 40]
    # standardised targets: predicting nothing gives a train MSE of 1 and a held-out R^2 of 0 or less
    assert rows[-1]["train_mse"] < 0.95 and rows[-1]["r2_dy"] > 0.1


def _tiny_export(tmp_path, quantizer: str) -> str:
    """A randomly initialised ``tiny`` LAM, exported."""
    model = LatentActionModel(get_lam_config("tiny", quantizer), nnx.Rngs(0))
    return str(save_lam(model, tmp_path / "export"))


def test_codebook_refit_lowers_the_distortion_and_scores_both_codebooks(tmp_path):
    script = str(REPO_ROOT / "benchmarks" / "bench_lam_codebook_refit.py")
    args = ["--lam", _tiny_export(tmp_path, "nsvq"), "--out", str(tmp_path / "out")]
    args += ["--episodes=6", "--fit_pairs=128"]
    rows = _json_lines(_run([script, *args], tmp_path))
    assert [r["codebook"] for r in rows] == ["codebook", "refit"]
    assert rows[1]["fit_distortion"] < rows[0]["fit_distortion"]  # the random init is far from the vectors
    for row in rows:
        assert set(row["probe_linear_r2"]) == {"dx", "dy"}
        assert (tmp_path / "out" / row["codebook"] / "quality.json").exists()


def test_codebook_refit_rejects_a_codebook_free_quantizer(tmp_path):
    script = str(REPO_ROOT / "benchmarks" / "bench_lam_codebook_refit.py")
    out = subprocess.run(
        [sys.executable, script, "--lam", _tiny_export(tmp_path, "fsq"), "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "(fsq) has no codebook to refit" in out.stderr


def test_kmeans_finds_separated_clusters_and_keeps_an_empty_centroid(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    from bench_lam_codebook_refit import distortion, kmeans

    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [-5.0, 0.0]], np.float32)
    vectors = np.concatenate([c + 0.1 * rng.normal(size=(50, 2)) for c in centres]).astype(np.float32)
    start = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 100.0]], np.float32)  # the third gets no vectors
    fitted = kmeans(vectors, start, iterations=10)
    np.testing.assert_allclose(fitted[:2], [vectors[:50].mean(0), vectors[50:].mean(0)], rtol=1e-5)
    np.testing.assert_array_equal(fitted[2], start[2])
    assert distortion(vectors, fitted) < 0.05 < distortion(vectors, start)


@pytest.mark.parametrize(
    "item, message", [("motion_kernal=7", "key of the model config"), ("dim=x", "Expecting value")]
)
def test_lam_benchmarks_reject_a_bad_model_override(tmp_path, item, message):
    script = str(REPO_ROOT / "benchmarks" / "bench_lam_decoder_ceiling.py")
    out = subprocess.run(
        [sys.executable, script, "--model", item], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0 and item in out.stderr and message in out.stderr


def test_model_overrides_parse_json_and_take_bare_text_only_for_text_fields(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    from report import override_model

    cfg = get_lam_config("tiny")
    override_model(cfg, ["code_head=max", "motion_kernel=7", "difference_embedding=true"])
    assert (cfg.code_head, cfg.motion_kernel, cfg.difference_embedding) == ("max", 7, True)
    override_model(cfg, ['code_head="lapa"'])  # JSON text works too
    assert cfg.code_head == "lapa"
    with pytest.raises(SystemExit, match="motion_kernel=seven"):
        override_model(cfg, ["motion_kernel=seven"])  # an int field does not take text
    with pytest.raises(SystemExit, match="quantizer comes with its options"):
        override_model(cfg, ["quantizer=fsq"])  # would keep nsvq's quantizer_options


def test_lapa_job_script_trains_and_exports(tmp_path, sp_model):
    from helpers import write_latent_jsonl

    write_latent_jsonl(tmp_path / "latent.jsonl", 64)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        PYTHON=sys.executable,
        PRESET="debug_latent",
        MESH_DIM="1,-1,1,1",
        BATCH_SIZE="8",
        TOTAL_STEPS="10",
        TOKENIZER=str(sp_model),
        DATASET=str(tmp_path / "latent.jsonl"),
        INIT="",
        OUTPUT_DIR=str(tmp_path / "out"),
        EXTRA_FLAGS="--config.data.max_length=96 --config.log_every=5",
        PYTHONPATH=str(REPO_ROOT),
    )
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "latent_pretrain_openx.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tokens_latent"] > 0 and (tmp_path / "out" / "params").stat().st_size > 0
