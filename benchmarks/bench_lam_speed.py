"""Latent action model training throughput (frame pairs/s) and compile time at LAM presets.

    python benchmarks/bench_lam_speed.py [--presets lapa,small] [--batch 8] [--steps 5] [--dtype float32] \
        [--model dim=256 --model spatial_depth=4 ...]
    # LAPA's LAQ architecture at 64 px (10.8M parameters), as the peer harness times it in PyTorch:
    python benchmarks/bench_lam_speed.py --presets lapa --model image_size=64 --model patch_size=8 \
        --model dim=256 --model spatial_depth=4 --model temporal_depth=4 --model heads=8 --model dim_head=32

Times the compiled train step of ``lam.train`` (AOT compile time, then the median of --steps steps
after one warm-up step; random frames already on the devices, data parallel over all local
devices). ``--model key=value`` overrides the presets' model fields (a preset so changed is
labelled ``<preset>+custom``). Prints a table and JSON lines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from report import override_model, print_report

from lam.configs.lam import get_config
from lam.model import LatentActionModel
from lam.train import codebook_upkeep, loss_for
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import compile_step, create_train_state, global_batch
from latent_pretraining.core.step import make_train_step


def bench(preset: str, batch: int, steps: int, dtype: str, overrides: list[str]) -> dict:
    config = get_config(f"{preset},nsvq")
    config.model.dtype = dtype
    override_model(config.model, overrides)
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
        "preset": f"{preset}+custom" if overrides else preset,
        "params_m": round(params / 1e6, 1),
        "image_size": size,
        "batch": batch,
        "dtype": dtype,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "compile_s": round(compile_s, 1),
        "step_s": round(median, 3),
        "times_s": [round(t, 4) for t in times],
        "pairs_per_s": round(batch / median, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="lapa,small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps (at least 5 for a median)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--model", action="append", default=[], help="key=value of the model config")
    args = p.parse_args()
    rows = [
        bench(preset, args.batch, args.steps, args.dtype, args.model) for preset in args.presets.split(",")
    ]
    cols = [c for c in rows[0] if c != "times_s"]
    print_report(rows, cols)


if __name__ == "__main__":
    main()
