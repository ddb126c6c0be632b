"""Two real processes on one machine form one 4-device mesh (jax.distributed + gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
from conftest import REPO_ROOT
from test_lapa_parity import FIXTURE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_load_generate_and_export_like_one_process(tmp_path):
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
                [
                    sys.executable,
                    str(REPO_ROOT / "tests" / "multihost_worker.py"),
                    str(FIXTURE),
                    str(tmp_path),
                ],
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
