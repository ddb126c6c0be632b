"""VLA core benchmark: train-step throughput and MFU, compile time, memory, generation latency.

    python benchmarks/bench_vla.py --config=latent_pretraining/configs/vla.py:debug \
        [--config.mesh=1,-1,1,1] [--config.model.remat_policy=full] [--batch=8 --seq_len=512]

Training FLOPs per token (PaLM's formula, the full attention matrix counted):
    6 * N_matmul + 12 * num_layers * hidden_size * seq_len
with N_matmul = the parameters of every matmul that runs per token (attention and MLP
weights of all layers plus the text, latent and action heads that the step scores;
embedding lookups excluded).
MFU = FLOPs/token * tokens/s / peak, with peak from --peak_tflops (default: 989 TFLOP/s
dense bf16 on H100/H200, nothing on CPU, where only achieved TFLOP/s is shown).

Generation latency: a prompt of --prompt_len tokens ([BOS] text + 256 vision tokens + text),
then 4 latent tokens or 7 action tokens, at batch 1 and 8; median over --gen_repeats runs
after one compile run. Prints a table and one JSON line per measurement.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from latent_pretraining.core.sharding import (
    create_sharded,
    logical_to_spec,
    make_mesh,
    maybe_initialize_distributed,
)
from latent_pretraining.core.state import memory_report
from latent_pretraining.model import Modality, VLAModel
from latent_pretraining.sampler import Sampler

config_flags.DEFINE_config_file("config", "latent_pretraining/configs/vla.py:debug", "VLA config and preset.")
flags.DEFINE_integer("batch", 8, "Global training batch size.")
flags.DEFINE_integer("seq_len", 512, "Training sequence length.")
flags.DEFINE_integer("steps", 10, "Timed training steps (after one warm-up step).")
flags.DEFINE_integer("prompt_len", 300, "Generation prompt length.")
flags.DEFINE_integer("gen_repeats", 5, "Timed generation runs per case.")
flags.DEFINE_float("peak_tflops", None, "Peak dense TFLOP/s per device for MFU (default: by platform).")
flags.DEFINE_bool("skip_train", False, "Only measure generation.")
FLAGS = flags.FLAGS

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# heads scored in the train step (LAPA's losses: text, latent, action; no vision loss)
TRAIN_HEADS = ("text", "latent", "action")


def matmul_params(cfg) -> int:
    d, f = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_kv_heads * (d // cfg.num_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * f
    heads = d * sum(cfg[f"{name}_vocab_size"] for name in TRAIN_HEADS)
    return cfg.num_layers * per_layer + heads


def train_flops_per_token(cfg, seq_len: int) -> float:
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len


def peak_tflops() -> float | None:
    if FLAGS.peak_tflops:
        return FLAGS.peak_tflops
    kind = jax.devices()[0].device_kind
    return next((v for k, v in GPU_PEAK_TFLOPS.items() if k in kind), None)


def synthetic_tokens(cfg, batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of [BOS text(16) vision(256) 8193 text(4) latent(4) action(7) text...] cut/padded to length."""
    rng = np.random.default_rng(seed)
    layout = [
        (Modality.TEXT, 16),
        (Modality.VISION, 257),
        (Modality.TEXT, 4),
        (Modality.LATENT, 4),
        (Modality.ACTION, 7),
    ]
    modality = np.concatenate([np.full(n, int(m)) for m, n in layout])
    modality = np.resize(modality, length)  # repeat the layout (packing-like) up to length
    vocab = np.array(
        [cfg.text_vocab_size, cfg.vision_vocab_size, cfg.latent_vocab_size, cfg.action_vocab_size]
    )
    ids = (rng.random((batch, length)) * vocab[modality][None]).astype(np.int32)
    ids[:, 0] = cfg.bos_token_id
    return ids, np.broadcast_to(modality, (batch, length)).astype(np.int32)


def peak_device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_train(cfg, mesh, model) -> dict:
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.1)
    with jax.set_mesh(mesh):
        opt_state = jax.jit(optimizer.init)(params)
    weights = {"text": 0.01, "latent": 0.99, "action": 1.0}

    def step(params, opt_state, ids, modality):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(ids[:, :-1], modality[:, :-1], heads=TRAIN_HEADS)
            total = 0.0
            for name in TRAIN_HEADS:
                mask = (modality[:, 1:] == Modality[name.upper()]).astype(jnp.float32)
                target = jnp.where(mask > 0, ids[:, 1:], 0)
                ce = optax.softmax_cross_entropy_with_integer_labels(logits[name], target)
                total = total + weights[name] * jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            return total

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batch, length = FLAGS.batch, FLAGS.seq_len + 1
    ids, modality = synthetic_tokens(cfg, batch, length, seed=0)
    data_sharding = jax.sharding.NamedSharding(
        mesh, logical_to_spec(("activation_batch", None), ids.shape, mesh)
    )
    ids, modality = (jax.device_put(a, data_sharding) for a in (ids, modality))
    jitted = jax.jit(step, donate_argnums=(0, 1))
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = jitted.lower(params, opt_state, ids, modality).compile()
        compile_s = time.perf_counter() - t0
        memory = memory_report(compiled)
        print("memory report before step 0:", json.dumps(memory))
        params, opt_state, loss = compiled(params, opt_state, ids, modality)
        float(loss)
        times = []
        for _ in range(FLAGS.steps):
            t0 = time.perf_counter()
            params, opt_state, loss = compiled(params, opt_state, ids, modality)
            float(loss)
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens_per_s = batch * FLAGS.seq_len / step_s
    flops = train_flops_per_token(cfg, FLAGS.seq_len)
    achieved = flops * tokens_per_s / 1e12
    peak = peak_tflops()
    return {
        "kind": "train_step",
        "batch": batch,
        "seq_len": FLAGS.seq_len,
        "step_s": step_s,
        "tokens_per_s": tokens_per_s,
        "tflops_per_s": achieved,
        "tflops_per_s_per_device": achieved / mesh.size,
        "mfu": None if peak is None else achieved / (peak * mesh.size),
        "compile_s": compile_s,
        "peak_bytes": peak_device_bytes(),
        "loss": float(loss),
        **memory,
    }


def bench_generate(cfg, mesh, model) -> list[dict]:
    sampler = Sampler(model, mesh=mesh)
    results = []
    for batch in (1, 8):
        ids, modality = synthetic_tokens(cfg, batch, FLAGS.prompt_len, seed=1)
        modality = modality.copy()
        modality[modality >= Modality.LATENT] = Modality.TEXT  # prompt: text + vision only
        ids = np.where(modality == Modality.TEXT, ids % cfg.text_vocab_size, ids)
        for vocab, n in (("latent", 4), ("action", 7)):
            t0 = time.perf_counter()
            sampler.generate(ids, modality, vocab=vocab, num_tokens=n)
            first_s = time.perf_counter() - t0
            times = []
            for _ in range(FLAGS.gen_repeats):
                t0 = time.perf_counter()
                sampler.generate(ids, modality, vocab=vocab, num_tokens=n)
                times.append(time.perf_counter() - t0)
            results.append(
                {
                    "kind": "generate",
                    "vocab": vocab,
                    "new_tokens": n,
                    "batch": batch,
                    "prompt_len": FLAGS.prompt_len,
                    "latency_ms": 1e3 * statistics.median(times),
                    "first_call_s": first_s,
                }
            )
    return results


def main(argv) -> None:
    del argv
    maybe_initialize_distributed()
    config = FLAGS.config
    cfg = config.model
    mesh = make_mesh(config.mesh)
    env = {
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "preset": config.preset,
        "dtype": cfg.dtype,
        "param_dtype": cfg.param_dtype,
        "remat": cfg.remat_policy,
        "scan_layers": cfg.scan_layers,
        "attention": cfg.attention_backend,
        "jax": jax.__version__,
    }
    t0 = time.perf_counter()
    model = create_sharded(lambda rngs: VLAModel(cfg, rngs=rngs), mesh, seed=config.seed)
    init_s = time.perf_counter() - t0
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"# {json.dumps(env)}\n# params {n_params:,} (matmul {matmul_params(cfg):,}), init {init_s:.1f}s")
    rows = []
    if not FLAGS.skip_train:
        rows.append(bench_train(cfg, mesh, model))
        model = create_sharded(lambda rngs: VLAModel(cfg, rngs=rngs), mesh, seed=config.seed)  # donated
    rows.extend(bench_generate(cfg, mesh, model))

    print(f"\n{'measurement':<34}{'value':>14}  detail")
    for r in rows:
        if r["kind"] == "train_step":
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            print(
                f"{'train tokens/s':<34}{r['tokens_per_s']:>14,.0f}  batch {r['batch']} x {r['seq_len']}, "
                f"step {1e3 * r['step_s']:.1f} ms"
            )
            print(f"{'train TFLOP/s (MFU)':<34}{r['tflops_per_s']:>14.3f}  MFU {mfu}")
            print(f"{'train compile s':<34}{r['compile_s']:>14.1f}")
            peak = r["peak_bytes"]
            print(
                f"{'peak device memory GiB':<34}{'n/a' if peak is None else f'{peak / 2**30:.2f}':>14}  "
                f"temp {r.get('temp_size_in_bytes', 0) / 2**30:.2f} GiB (compiler estimate)"
            )
        else:
            name = f"generate {r['new_tokens']} {r['vocab']} @ batch {r['batch']}"
            print(
                f"{name + ' ms':<34}{r['latency_ms']:>14.1f}  prompt {r['prompt_len']}, "
                f"first call {r['first_call_s']:.1f}s"
            )
    print()
    for r in rows:
        print(json.dumps({**env, "params": n_params, **r}))


if __name__ == "__main__":
    app.run(main)
