"""Latent action model training throughput (frame pairs/s) at the ``lapa`` and ``small`` presets.

    python benchmarks/bench_lam_speed.py [--presets lapa,small] [--batch 8] [--steps 5] [--dtype float32]

Times the compiled train step of ``lam.train`` (random frames already on the devices, data
parallel over all local devices) after one warm-up step. Prints a table and JSON lines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from report import print_report

from lam.configs.lam import get_config
from lam.model import LatentActionModel
from lam.train import codebook_upkeep, loss_for
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import compile_step, create_train_state, global_batch
from latent_pretraining.core.step import make_train_step


def bench(preset: str, batch: int, steps: int, dtype: str) -> dict:
    config = get_config(f"{preset},nsvq")
    config.model.dtype = dtype
    mesh = make_mesh(f"{jax.device_count()},1,1,1")
    batch = -(-batch // mesh.size) * mesh.size
    size = config.model.image_size
    frames = np.random.default_rng(0).random((batch, 2, size, size, 3)).astype(np.float32)
    optimizer, schedule = build_optimizer(config)
    graphdef, state, shardings = create_train_state(
        lambda rngs: LatentActionModel(config.model, rngs), optimizer, mesh, 0
    )
    example = global_batch({"frames": frames}, mesh)
    t0 = time.perf_counter()
    train_step = make_train_step(graphdef, loss_for(config), optimizer, schedule, codebook_upkeep)
    step = compile_step(train_step, state, example, shardings, mesh)
    compile_s = time.perf_counter() - t0
    state, metrics = step(state, example)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step(state, example)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    params = sum(x.size for x in jax.tree.leaves(state["params"]))
    return {
        "preset": preset,
        "params_m": round(params / 1e6, 1),
        "image_size": size,
        "batch": batch,
        "dtype": dtype,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "compile_s": round(compile_s, 1),
        "step_s": round(median, 3),
        "pairs_per_s": round(batch / median, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="lapa,small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    rows = [bench(preset, args.batch, args.steps, args.dtype) for preset in args.presets.split(",")]
    cols = list(rows[0])
    print_report(rows, cols)


if __name__ == "__main__":
    main()
