"""Policy server speed: one request's latency and where it goes, then requests/s with p50/p99 latency
at 1, 8 and 32 concurrent clients, with dynamic batching and with --no_batching.

    python benchmarks/bench_deploy.py [--policy DIR] [--clients 1,8,32] [--seconds 5] [--max_batch 8]

Without --policy, the bundle is a random debug VLA (the recorded LWM VQGAN fixture: 64x64 images,
a tokenizer trained here) written to a temporary directory. Each mode starts
``python -m latent_pretraining.deploy`` in a subprocess and waits for /healthz; clients are threads
posting json_numpy ``/act`` requests (full form, keep-alive) for --seconds per level, after one
request each. Latency is measured at the client; the breakdown is the server's ``timing`` (medians;
a batch's stages are the time of its whole model call). Prints a table, the batched/unbatched ratio
at the most clients, and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import json_numpy
import ml_collections
import numpy as np
import requests
from flax import nnx

from data.train_text_tokenizer import train as train_tokenizer
from latent_pretraining.actions.bins import ActionBins
from latent_pretraining.config import get_model_config
from latent_pretraining.model import VLAModel
from latent_pretraining.policy.bundle import write_bundle
from latent_pretraining.vqgan.model import get_vqgan_config

REPO_ROOT = Path(__file__).resolve().parent.parent
VQGAN_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "lwm_vqgan_tiny"
TASKS = ("push the cube", "pick up the red cube and put it on the blue ball", "go left", "push the green one")
STAGES = ("preprocess", "image_tokenizer", "generation", "queue", "total")


def build_bundle(out: Path) -> Path:
    """An action bundle of a random debug VLA with the VQGAN fixture (64x64 images) at ``out/policy``."""
    corpus = [*TASKS, "You are a helpful assistant. USER: What action should the robot take to"] * 50
    tokenizer = train_tokenizer(corpus, out / "tokenizer.model", vocab_size=160)
    recorded = json.loads((VQGAN_FIXTURE / "config.json").read_text())["config"]
    vqgan = get_vqgan_config("lwm")
    for key in ("resolution", "hidden_channels", "num_res_blocks", "z_channels", "num_embeddings"):
        vqgan[key] = recorded[key]
    vqgan.quantized_embed_dim = recorded["quantized_embed_dim"]
    vqgan.channel_mult = tuple(recorded["channel_mult"])
    model_config: ml_collections.ConfigDict = get_model_config("debug")
    model_config.vision_vocab_size, model_config.action_vocab_size = 8448, 64
    ActionBins([np.linspace(-0.5, 0.5, 65)] * 6 + [np.array([-0.5, 0.5, 1.5])]).to_csv(out / "bins.csv")
    (out / "bins.json").write_text(json.dumps({"gripper": {"convention": "01", "threshold": 0.5}}))
    bundle = write_bundle(
        out / "policy",
        model_config=model_config,
        params=VLAModel(model_config, rngs=nnx.Rngs(0)),
        tokenizer=tokenizer,
        vqgan=VQGAN_FIXTURE / "vqgan",
        vqgan_config=vqgan,
        image_mode="center_crop",
        tokens_per_frame=64,
        bins_csv=out / "bins.csv",
        statistics=out / "bins.json",
        provenance={"source": "bench_deploy (random weights)"},
    )
    return bundle.directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(policy: Path, flags: list[str]) -> Iterator[str]:
    """The URL of a server of ``policy`` started with ``flags``, once /healthz answers 200."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [
        sys.executable,
        "-m",
        "latent_pretraining.deploy",
        "--policy",
        str(policy),
        "--port",
        str(port),
    ]
    process = subprocess.Popen([*command, *flags], cwd=REPO_ROOT, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 600
    try:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server ({' '.join(flags) or 'batching'}) did not come up")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def request_bodies(resolution: int) -> list[str]:
    """json_numpy ``/act`` bodies (full form) of a few distinct images and task descriptions."""
    rng = np.random.default_rng(0)
    return [
        json_numpy.dumps(
            {
                "image": rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8),
                "instruction": TASKS[i % len(TASKS)],
                "return": "full",
            }
        )
        for i in range(8)
    ]


def load(url: str, bodies: list[str], clients: int, seconds: float) -> tuple[list[float], list[dict]]:
    """Client latencies (s) and server answers of ``clients`` threads posting for ``seconds``."""
    latencies: list[float] = []
    answers: list[dict] = []
    lock, start_line = threading.Lock(), threading.Barrier(clients)

    def client(index: int) -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        session.post(f"{url}/act", data=bodies[index % len(bodies)], headers=headers).raise_for_status()
        start_line.wait()
        end, i = time.perf_counter() + seconds, index
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            response = session.post(f"{url}/act", data=bodies[i % len(bodies)], headers=headers)
            response.raise_for_status()
            with lock:
                latencies.append(time.perf_counter() - t0)
                answers.append(response.json())
            i += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, answers


def measure(mode: str, url: str, bodies: list[str], levels: list[int], seconds: float) -> list[dict]:
    rows = []
    for clients in levels:
        t0 = time.perf_counter()
        latencies, answers = load(url, bodies, clients, seconds)
        elapsed = time.perf_counter() - t0
        ms = np.asarray(latencies) * 1e3
        row = {
            "kind": "deploy_load",
            "mode": mode,
            "clients": clients,
            "requests": len(latencies),
            "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "mean_batch": statistics.fmean(a["batch"] for a in answers),
        }
        row["stages_ms"] = {s: 1e3 * statistics.median(a["timing"][s] for a in answers) for s in STAGES}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", type=Path, default=None, help="a bundle (default: a random debug VLA)")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="per level of clients")
    parser.add_argument("--max_batch", type=int, default=8)
    parser.add_argument("--batch_wait_ms", type=float, default=5.0)
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as scratch:
        policy = args.policy or build_bundle(Path(scratch))
        resolution = json.loads((policy / "policy.json").read_text())["image"]["resolution"]
        bodies = request_bodies(resolution)
        batching = ["--max_batch", str(args.max_batch), "--batch_wait_ms", str(args.batch_wait_ms)]
        rows = []
        for mode, flags in (("batched", batching), ("unbatched", ["--no_batching"])):
            with serving(policy, flags) as url:
                rows += measure(mode, url, bodies, levels, args.seconds)

    print(f"\n{'mode':<10}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}")
    for r in rows:
        print(
            f"{r['mode']:<10}{r['clients']:>8}{r['requests_per_s']:>9.1f}{r['p50_ms']:>9.1f}"
            f"{r['p99_ms']:>9.1f}{r['mean_batch']:>7.2f}"
        )
    print(f"\n{'server ms (median)':<18}{'clients':>8}" + "".join(f"{s:>16}" for s in STAGES))
    for r in rows:
        print(f"{r['mode']:<18}{r['clients']:>8}" + "".join(f"{r['stages_ms'][s]:>16.1f}" for s in STAGES))
    most = max(levels)
    rate = {r["mode"]: r["requests_per_s"] for r in rows if r["clients"] == most}
    print(f"\nbatched / unbatched requests/s at {most} clients: {rate['batched'] / rate['unbatched']:.2f}x\n")
    for r in rows:
        print(json.dumps({"policy": policy.name, "max_batch": args.max_batch, **r}))


if __name__ == "__main__":
    main()
