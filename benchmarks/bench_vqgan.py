"""VQGAN encode throughput (images/s) for the LWM and small configurations.

    python benchmarks/bench_vqgan.py [--batch 16] [--repeats 5] [--presets lwm,small]

Times the jitted encoder (images already preprocessed, on the device) after one
compile call, split over all local devices like the pre-tokenizer. Random-init
weights: speed does not depend on their values. Prints a table and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np
from flax import nnx

from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import batch_sharding
from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config, tokens_per_side


def bench(preset: str, batch: int, repeats: int, dtype: str) -> dict:
    cfg = get_vqgan_config(preset)
    cfg.dtype = dtype
    model = VQGAN(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    mesh = make_mesh(f"{jax.local_device_count()},1,1,1", devices=jax.local_devices())
    batch = -(-batch // mesh.size) * mesh.size
    size = cfg.resolution
    images = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    x = jax.device_put(images, batch_sharding(mesh, 4, images.shape))
    encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x)[1])
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        jax.block_until_ready(encode(state, x))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(encode(state, x))
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {
        "preset": preset,
        "resolution": size,
        "tokens": tokens_per_side(cfg) ** 2,
        "batch": batch,
        "dtype": dtype,
        "images_per_s": batch / step,
        "batch_ms": 1e3 * step,
        "first_call_s": compile_s,
        "device": jax.devices()[0].device_kind,
        "devices": mesh.size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", default="lwm,small")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    rows = [bench(p, args.batch, args.repeats, args.dtype) for p in args.presets.split(",")]
    print(f"{'preset':<8}{'input':>9}{'tokens':>8}{'batch':>7}{'images/s':>11}{'batch ms':>10}")
    for r in rows:
        print(
            f"{r['preset']:<8}{r['resolution']:>6}px{r['tokens']:>9}{r['batch']:>7}{r['images_per_s']:>11.1f}"
            f"{r['batch_ms']:>10.1f}"
        )
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
