"""The demo and the benchmark scripts run end to end and report what they claim."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from lam.checkpoint import load_lam


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


DEMO_STAGES = (
    "data",
    "tokenizer",
    "lam",
    "labels",
    "pretrain",
    "preprocess",
    "finetune",
    "policy",
    "deploy",
    "experiment",
    "results",
)


def _demo(out, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, like a user
    env["DEMO_OUT"] = str(out)
    command = ["bash", str(REPO_ROOT / "scripts" / "demo.sh"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def test_micro_demo_runs_every_stage_reuses_them_and_names_a_failing_one(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out, "micro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lines = [line for line in first.stdout.splitlines() if line.startswith("== ")]
    started = [line.split()[1] for line in lines if ": done in " not in line][:-1]  # last: "== done"
    assert started == list(DEMO_STAGES)
    timed = [re.fullmatch(r"== (\w+): done in (\d+) s \(the demo so far: (\d+) s\)", x) for x in lines]
    assert [m[1] for m in timed if m] == list(DEMO_STAGES)  # each stage's wall time, after it ends
    totals = [int(m[3]) for m in timed if m]
    assert totals == sorted(totals) and all(int(m[2]) <= int(m[3]) for m in timed if m)
    results = json.loads((out / "results" / "results.json").read_text())
    assert set(results) == {"lam", "latent", "action", "closed_loop", "arms"}
    assert list(results["arms"]["arms"]) == ["scratch", "latent", "actions"]
    assert all(arm["success"]["overall"]["episodes"] == 3 for arm in results["arms"]["arms"].values())
    for name in ("training_curves", "code_usage", "closed_loop", "lam_reconstructions", "arms"):
        assert (out / "results" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "results" / "figures").glob("side_by_side_rollout_*.gif"))
    true_rows = (out / "actions_train.jsonl").read_text().splitlines()
    true_codes = [json.loads(line)["delta"] for line in true_rows]
    assert true_codes and all(len(codes) == 4 for codes in true_codes)
    assert results["closed_loop"]["success"]["expert"]["success_rate"] == 1.0  # the world and server work
    assert {"policy", "random", "noop"} <= set(results["closed_loop"]["success"])
    assert results["latent"]["held_out_rows"] > 0 and results["action"]["held_out_rows"] > 0
    assert (out / "results" / "report.md").read_text().startswith("# Results")
    assert (out / "policy" / "policy.json").is_file()
    for stage in DEMO_STAGES:
        assert (out / ".stages" / stage).read_text().startswith("micro ")
    again = _demo(out, "micro")  # every stage is reused: nothing is trained again
    assert again.returncode == 0, again.stderr[-3000:]
    reused = [line for line in again.stdout.splitlines() if "finished before, reusing" in line]
    assert len(reused) == len(DEMO_STAGES)
    (out / ".stages" / "results").unlink()
    (out / "vla_latent" / "metrics.jsonl").write_text("{not json\n")
    failed = _demo(out, "micro")
    assert failed.returncode != 0
    assert 'stage "results" failed' in failed.stderr and "metrics.jsonl:1: not valid JSON" in failed.stderr
    assert _demo(out, "tiny").returncode == 2


def test_bench_vla_reports_training_and_generation(tmp_path):
    stdout = _run(
        [
            str(REPO_ROOT / "benchmarks" / "bench_vla.py"),
            f"--config={REPO_ROOT / 'latent_pretraining/configs/vla.py'}:debug",
            "--config.model.vision_vocab_size=512",
            "--objective=lapa_work",
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
    # LAPA's finetune job: the action loss, every other head computed, its optimizer
    assert train[0]["loss_heads"] == ["action"] and train[0]["forward_heads"] == ["text", "vision", "latent"]
    assert train[0]["optimizer"]["learning_rate"] == 2e-5 and train[0]["optimizer"]["schedule"] == "constant"
    assert train[0]["model"].startswith("custom (hidden 64")  # the override is not called "debug"
    assert {(r["vocab"], r["new_tokens"], r["batch"], r["padding"], r["padded_len"]) for r in gen} == {
        (vocab, n, batch, padding, length)
        for vocab, n in (("latent", 4), ("action", 7))
        for batch in (1, 8)
        for padding, length in (("bucket", 64), ("exact", 40))
    }
    assert all(r["latency_ms"] > 0 for r in gen)
    assert "memory report before step 0" in stdout


def test_bench_vla_counts_the_flops_of_the_heads_it_trains_and_runs():
    import importlib.util

    from latent_pretraining.config import get_model_config

    spec = importlib.util.spec_from_file_location("bench_vla", REPO_ROOT / "benchmarks" / "bench_vla.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = get_model_config("debug")
    cfg.update(hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2, num_kv_heads=1)
    cfg.update(text_vocab_size=100, vision_vocab_size=50, latent_vocab_size=8, action_vocab_size=20)
    # per layer: q and o 8x8 each, k and v 8x4 each, gate/up/down 8x16 each = 128 + 64 + 384 = 576
    layers = 2 * 576
    assert bench.layer_params(cfg) == layers
    seq = 10
    attention = 12 * 2 * 8 * seq
    assert bench.train_flops_per_token(cfg, seq, ("action",), ()) == 6 * (layers + 8 * 20) + attention
    assert bench.train_flops_per_token(cfg, seq, ("action",), ("text", "latent")) == (
        6 * (layers + 8 * 20) + 2 * 8 * 108 + attention
    )


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


def test_lam_quality_reports_a_run_and_its_codebook_refit(tmp_path):
    script = str(REPO_ROOT / "benchmarks" / "bench_lam_quality.py")
    args = ["--steps=4", "--episodes=6", "--runs=nsvq", "--refit", "--refit_pairs=64", "--out=runs"]
    rows = _json_lines(_run([script, *args], tmp_path))
    assert [r["run"] for r in rows] == ["nsvq", "nsvq+refit"]
    assert rows[0]["psnr_copy"] == rows[1]["psnr_copy"]  # the same held-out pairs
    assert set(rows[1]["probe_linear_r2"]) == {"dx", "dy"}
    run = tmp_path / "runs" / "nsvq"
    refit_quality = json.loads((run / "refit" / "refit" / "quality.json").read_text())
    assert rows[1]["psnr_gain"] == pytest.approx(refit_quality["psnr_gain"], abs=1e-3)  # the refit's row
    configs = [json.loads((run / d / "lam_config.json").read_text()) for d in ("export", "export_refit")]
    assert configs[0] == configs[1]
    books = [load_lam(run / d).quantizer.codebook[...] for d in ("export", "export_refit")]
    assert not np.allclose(books[0], books[1])  # the refit export has the refit codebook


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

    from lam.model import get_lam_config

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
