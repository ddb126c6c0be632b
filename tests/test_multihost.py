"""Two real processes on one machine form one 4-device mesh (jax.distributed + gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from test_lapa_parity import FIXTURE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: str, args: list[str]) -> None:
    """Runs ``script`` as 2 processes x 2 CPU devices forming one 4-device cluster."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests"), env.get("PYTHONPATH", "")]),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "tests" / script), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=240)[0])
        finally:
            proc.kill()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]


def test_two_processes_load_generate_and_export_like_one_process(tmp_path):
    _launch("multihost_worker.py", [str(FIXTURE), str(tmp_path)])
    results = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(2)]
    expected = np.load(FIXTURE / "batch2_delta_logits.npy")
    for r in results:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 4, 2)
        assert r["param_devices"] == 4  # parameters are spread over both hosts' devices
        np.testing.assert_allclose(np.asarray(r["latent_logits"]), expected, rtol=1e-5, atol=1e-5)
        # generation on the 2-host mesh returns LAPA's greedy tokens on every host
        np.testing.assert_array_equal(r["tokens"], np.load(FIXTURE / "gen_tokens_greedy_topk1.npy"))
    # process 0 gathered the shards of both hosts and wrote LAPA's exact file
    assert (tmp_path / "params").read_bytes() == (FIXTURE / "params").read_bytes()


def test_two_hosts_read_disjoint_rows_and_train_like_one(tmp_path, sp_model, monkeypatch, eight_devices):
    from helpers import write_latent_jsonl

    from latent_pretraining import train as vla_train
    from latent_pretraining.configs.lapa import get_config
    from latent_pretraining.core.sharding import make_mesh

    write_latent_jsonl(tmp_path / "train.jsonl", 64)
    _launch("multihost_train_worker.py", [str(sp_model), str(tmp_path / "train.jsonl"), str(tmp_path)])
    host0, host1 = (json.loads((tmp_path / f"rows_{i}.json").read_text()) for i in range(2))
    assert len(host0) == len(host1) == 10 and all(len(b) == 4 for b in host0 + host1)  # 8 rows / 2 hosts
    for a, b in zip(host0, host1, strict=True):
        assert not set(a) & set(b)  # no row is read by both hosts
    config = get_config("debug_latent")
    config.data.tokenizer, config.data.train, config.data.max_length = (
        str(sp_model),
        str(tmp_path / "train.jsonl"),
        96,
    )
    config.run_dir, config.batch_size, config.total_steps = str(tmp_path / "single"), 8, 10
    config.log_every, config.eval_every = 5, 0
    monkeypatch.setattr(vla_train, "make_mesh", lambda spec: make_mesh("1,1,1,1", devices=eight_devices[:1]))
    vla_train.train(config)

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    two, one = losses(tmp_path / "run"), losses(tmp_path / "single")
    assert two.keys() == one.keys() == {5, 10}
    for step in two:
        assert two[step] == pytest.approx(one[step], rel=1e-4)
