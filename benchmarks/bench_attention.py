"""Attention backends on one device: agreement of cuDNN with XLA, and forward+backward time.

    python benchmarks/bench_attention.py [--preset=1b] [--batch=4] [--seq_len=2048]

Runs the full model forward and backward with ``attention_backend`` = xla and (on an
NVIDIA GPU) cudnn, in bf16, on rows with left padding and two packed examples, and
reports the max |logit difference| between backends at real tokens and the median step
time. On other platforms only XLA is measured. Prints a table and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from latent_pretraining.config import get_model_config
from latent_pretraining.model import VLAModel


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    backends = ["xla", "cudnn"] if jax.default_backend() == "gpu" else ["xla"]
    rng = np.random.default_rng(0)
    b, t = args.batch, args.seq_len
    ids = jnp.asarray(rng.integers(3, 1000, size=(b, t)), jnp.int32)
    modality = jnp.zeros((b, t), jnp.int32)
    segments = np.ones((b, t), np.int32)
    segments[0, : t // 8] = 0  # left padding
    segments[-1, t // 2 :] = 2  # a second packed example
    segments = jnp.asarray(segments)
    results, logits = [], {}
    for backend in backends:
        cfg = get_model_config(args.preset)
        cfg.dtype = "bfloat16"
        cfg.attention_backend = backend
        model = VLAModel(cfg, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)

        def loss(state, cfg=cfg, graphdef=graphdef):
            out = nnx.merge(graphdef, state)(ids, modality, None, segments, heads=("text",))["text"]
            return jnp.mean(jax.nn.logsumexp(out, axis=-1) * (segments > 0)), out

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (_, out), grads = step(state)
        jax.block_until_ready(grads)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(step(state))
            times.append(time.perf_counter() - t0)
        logits[backend] = np.asarray(out)
        results.append(
            {
                "backend": backend,
                "preset": args.preset,
                "batch": b,
                "seq_len": t,
                "fwd_bwd_ms": 1e3 * statistics.median(times),
                "device": jax.devices()[0].device_kind,
            }
        )
        del model, state, grads
    valid = np.asarray(segments) > 0
    for r in results:
        r["max_abs_logit_diff_vs_xla"] = float(np.abs(logits[r["backend"]] - logits["xla"])[valid].max())
        r["finite"] = bool(np.isfinite(logits[r["backend"]]).all())
    print(f"{'backend':<10}{'fwd+bwd ms':>12}{'max |dlogit| vs xla':>22}{'finite':>8}")
    for r in results:
        print(
            f"{r['backend']:<10}{r['fwd_bwd_ms']:>12.1f}{r['max_abs_logit_diff_vs_xla']:>22.4f}{r['finite']!s:>8}"
        )
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
