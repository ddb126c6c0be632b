"""VLA core benchmark: our trainer's step (throughput, MFU, compile time, memory) for one of LAPA's
objectives, and generation latency with and without prompt-length buckets.

    python benchmarks/bench_vla.py --config=latent_pretraining/configs/vla.py:debug \
        [--objective pretrain|finetune|lapa_work] [--config.model.hidden_size=256 ...] \
        [--config.mesh=1,-1,1,1] [--config.model.remat_policy=full] [--batch=8 --seq_len=512]

The step is ``core.step.make_train_step`` with ``train.loss_for`` (what ``latent_pretraining.train``
runs) and the optimizer of LAPA's job for the objective (``configs/lapa.py``): ``pretrain``
(``latent_pretrain``: 0.99 latent + 0.01 text loss), ``finetune`` (``finetune``: action loss only)
or ``lapa_work`` (one forward scoring every head, cross entropy and accuracy as metrics, and the
gradient of the action loss alone, as LAPA's step does).

Training FLOPs per token (PaLM's formula, the full attention matrix counted):
    6 * (N_layers + N_loss_heads) + 2 * N_forward_heads + 12 * num_layers * hidden_size * seq_len
with N_layers the attention and MLP weights of all layers, N_loss_heads the output heads that have
a loss (forward and backward) and N_forward_heads those only computed (``lapa_work``); embedding
lookups are excluded. MFU = FLOPs/token * tokens/s / peak, with peak from --peak_tflops (default:
989 TFLOP/s dense bf16 on H100/H200, nothing on CPU, where only achieved TFLOP/s is shown).

Generation latency: a prompt of --prompt_len tokens ([BOS] text + 256 vision tokens + text),
then 4 latent tokens or 7 action tokens, at batch 1 and 8, with the prompt left-padded to the
sampler's length bucket (``bucket``) and at its own length (``exact``); median over --gen_repeats
runs after one compile run. A model config that differs from its preset is labelled ``custom``
with its size. Prints a table and one JSON line per measurement.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from latent_pretraining.config import get_model_config
from latent_pretraining.configs.lapa import get_config as lapa_job
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import create_sharded, make_mesh, maybe_initialize_distributed
from latent_pretraining.core.state import compile_step, create_train_state, global_batch, memory_report
from latent_pretraining.core.step import make_train_step
from latent_pretraining.model import VOCABS, Modality, VLAModel
from latent_pretraining.sampler import Sampler, bucket_length
from latent_pretraining.train import loss_for, token_losses

config_flags.DEFINE_config_file("config", "latent_pretraining/configs/vla.py:debug", "VLA config and preset.")
flags.DEFINE_integer("batch", 8, "Global training batch size.")
flags.DEFINE_integer("seq_len", 512, "Training sequence length.")
flags.DEFINE_integer("steps", 10, "Timed training steps (after one warm-up step).")
flags.DEFINE_integer("prompt_len", 300, "Generation prompt length.")
flags.DEFINE_integer("gen_repeats", 5, "Timed generation runs per case.")
flags.DEFINE_float("peak_tflops", None, "Peak dense TFLOP/s per device for MFU (default: by platform).")
flags.DEFINE_bool("skip_train", False, "Only measure generation.")
flags.DEFINE_enum("objective", "pretrain", ["pretrain", "finetune", "lapa_work"], "What the step trains.")
FLAGS = flags.FLAGS

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
JOBS = {"pretrain": "latent_pretrain", "finetune": "finetune", "lapa_work": "finetune"}  # configs/lapa.py


def layer_params(cfg) -> int:
    """Matmul weights of the attention and MLP blocks of all layers."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_kv_heads * (d // cfg.num_heads)
    return cfg.num_layers * (d * d * 2 + d * kv * 2 + 3 * d * f)


def head_params(cfg, heads) -> int:
    return cfg.hidden_size * sum(cfg[f"{name}_vocab_size"] for name in heads)


def train_flops_per_token(cfg, seq_len: int, loss_heads, forward_heads) -> float:
    return (
        6.0 * (layer_params(cfg) + head_params(cfg, loss_heads))
        + 2.0 * head_params(cfg, forward_heads)
        + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len
    )


def model_label(preset: str, cfg) -> str:
    """The preset's name, or ``custom (...)`` with the size of a config that differs from it."""
    try:
        same = get_model_config(preset).to_dict() == cfg.to_dict()
    except ValueError:
        same = False
    if same:
        return preset
    return (
        f"custom (hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, {cfg.num_layers} layers, "
        f"{cfg.num_heads} heads)"
    )


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


def objective(cfg):
    """The LAPA job config (optimizer, loss weights), the loss, and the heads with a loss / only run."""
    job = lapa_job(JOBS[FLAGS.objective])
    job.model = cfg
    loss_heads = tuple(h for h in VOCABS if job.loss[h] > 0)
    if FLAGS.objective != "lapa_work":
        return job, loss_for(job), loss_heads, ()
    forward_heads = tuple(h for h in VOCABS if h not in loss_heads)
    every_head = dict.fromkeys(VOCABS, 1.0)

    def loss_fn(model, batch, rng):  # one forward scores every head, as LAPA's step does
        _, metrics, _, _ = token_losses(model, batch, every_head)
        return metrics["loss_action"], metrics, None  # only the action loss is differentiated

    return job, loss_fn, loss_heads, forward_heads


def training_batch(cfg, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """A batch in ``vla_data``'s layout: inputs and next-token targets of synthetic rows."""
    ids, modality = synthetic_tokens(cfg, batch, seq_len + 1, seed=0)
    return {
        "inputs": ids[:, :-1],
        "modality": modality[:, :-1].copy(),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
        "segment_ids": np.ones((batch, seq_len), np.int32),
        "targets": ids[:, 1:].copy(),
        "target_modality": modality[:, 1:].copy(),
        "target_weight": np.ones((batch, seq_len), np.float32),
    }


def bench_train(cfg, mesh) -> dict:
    job, loss_fn, loss_heads, forward_heads = objective(cfg)
    optimizer, schedule = build_optimizer(job)
    graphdef, state, shardings = create_train_state(
        lambda rngs: VLAModel(cfg, rngs=rngs), optimizer, mesh, job.seed
    )
    batch = global_batch(training_batch(cfg, FLAGS.batch, FLAGS.seq_len), mesh)
    t0 = time.perf_counter()
    step = compile_step(
        make_train_step(graphdef, loss_fn, optimizer, schedule), state, batch, shardings, mesh
    )
    compile_s = time.perf_counter() - t0
    memory = memory_report(step)
    print("memory report before step 0:", json.dumps(memory))
    state, metrics = step(state, batch)
    float(metrics["loss"])
    times = []
    for _ in range(FLAGS.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        float(metrics["loss"])
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens_per_s = FLAGS.batch * FLAGS.seq_len / step_s
    flops = train_flops_per_token(cfg, FLAGS.seq_len, loss_heads, forward_heads)
    achieved = flops * tokens_per_s / 1e12
    peak = peak_tflops()
    opt = job.optimizer
    return {
        "kind": "train_step",
        "objective": FLAGS.objective,
        "loss_heads": list(loss_heads),
        "forward_heads": list(forward_heads),
        "optimizer": {k: opt[k] for k in ("learning_rate", "schedule", "weight_decay", "clip_gradient")},
        "batch": FLAGS.batch,
        "seq_len": FLAGS.seq_len,
        "step_s": step_s,
        "times_s": times,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops,
        "tflops_per_s": achieved,
        "tflops_per_s_per_device": achieved / mesh.size,
        "mfu": None if peak is None else achieved / (peak * mesh.size),
        "compile_s": compile_s,
        "peak_bytes": peak_device_bytes(),
        "loss": float(metrics["loss"]),
        **memory,
    }


def bench_generate(cfg, mesh, model) -> list[dict]:
    samplers = {
        "bucket": Sampler(model, mesh=mesh),
        "exact": Sampler(model, mesh=mesh, buckets=(FLAGS.prompt_len,)),
    }
    results = []
    for batch in (1, 8):
        ids, modality = synthetic_tokens(cfg, batch, FLAGS.prompt_len, seed=1)
        modality = modality.copy()
        modality[modality >= Modality.LATENT] = Modality.TEXT  # prompt: text + vision only
        ids = np.where(modality == Modality.TEXT, ids % cfg.text_vocab_size, ids)
        for padding, sampler in samplers.items():
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
                        "padding": padding,
                        "padded_len": bucket_length(FLAGS.prompt_len, sampler.buckets),
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
        "model": model_label(config.preset, cfg),
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
    print(
        f"# {json.dumps(env)}\n# params {n_params:,} (layer matmuls {layer_params(cfg):,}), "
        f"init {init_s:.1f}s"
    )
    rows = []
    if not FLAGS.skip_train:
        rows.append(bench_train(cfg, mesh))
    rows.extend(bench_generate(cfg, mesh, model))

    print(f"\n{'measurement':<34}{'value':>14}  detail")
    for r in rows:
        if r["kind"] == "train_step":
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            print(
                f"{'train tokens/s':<34}{r['tokens_per_s']:>14,.0f}  {r['objective']} "
                f"(loss: {'+'.join(r['loss_heads'])}), batch {r['batch']} x {r['seq_len']}, "
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
                f"{name + ' ms':<34}{r['latency_ms']:>14.1f}  prompt {r['prompt_len']} padded to "
                f"{r['padded_len']} ({r['padding']}), first call {r['first_call_s']:.1f}s"
            )
    print()
    for r in rows:
        print(json.dumps({**env, "params": n_params, **r}))


if __name__ == "__main__":
    app.run(main)
