"""Our side of the peer harness: times this project's code at a stage of ``stages.py``.

    .venv/bin/python benchmarks/peer/ours_side.py --stage vla_24m --variant finetune [--warmup 1 --repeats 5]

Prints one JSON line (``stages.record``, ``"side": "ours"``). Per stage kind:

- ``vla_train``: the trainer's step (``core.step.make_train_step`` over ``VLAModel``, AOT-compiled by
  ``core.state.compile_step`` with donation) with the ``lapa.py:finetune`` preset's optimizer (AdamW,
  constant lr, global-norm clip), the model fields of the stage, then ``device_get`` of the metrics.
  Variants: ``finetune`` is our finetune objective (``train.loss_for``: the action head only, as
  ``config.loss`` weights it); ``finetune_unrolled`` the same with ``scan_layers=False`` (LAPA's jobs
  scan the layers; both sides do in the other variants); ``lapa_work`` does what LAPA's step does:
  all four heads forward and scored, the gradient of the action loss only.
- ``generate``: ``Sampler.generate`` (prompt left-padded to its length bucket); latent tokens greedy as
  LAPA's latent sampler (``model.generate``), action tokens sampled at temperature 1 from the top 50 as
  LAPA's ``generate_vision`` does.
- ``lam_train``: ``lam.train``'s step (loss, NSVQ upkeep) at LAPA's LAQ dimensions with its
  optimizer (Adam: no weight decay, betas 0.9/0.99, lr 1e-4, clip 0.5); ``first_s`` is compile plus
  the first step. Variant ``cached``: the compile finds the program in JAX's persistent cache (a
  temporary folder an untimed compile filled), as a rerun or resume of ``lam.train`` does.
- ``preprocess``: ``python -m data.finetune_preprocess`` as a whole process on the input JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import stages  # noqa: E402

SIDE = "ours"


def model_config(model: dict, scan_layers: bool = True):
    """Our model config at the stage's fields; layers scanned as in LAPA's jobs unless told."""
    from latent_pretraining.config import get_model_config

    c = get_model_config("7b")
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "max_sequence_length",
        "rope_theta",
        "rms_norm_eps",
        "initializer_range",
        "dtype",
        *stages.VOCAB_FIELDS,
    ):
        c[key] = model[key]
    c.num_kv_heads = model["num_heads"]
    c.param_dtype = "float32"
    c.remat_policy = "full" if model["remat"] else "none"
    c.scan_layers = scan_layers
    c.attention_backend = "xla"
    return c


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
        out[name] = md.version(name)
    return out


def lapa_work_loss():
    """LAPA's finetune step: every head scored (its metrics), the action loss differentiated."""
    from latent_pretraining.model import VOCABS
    from latent_pretraining.train import token_losses

    every_head = dict.fromkeys(VOCABS, 1.0)

    def loss_fn(model, batch, rng):
        _, metrics, _, _ = token_losses(model, batch, every_head)
        return metrics["loss_action"], metrics, None

    return loss_fn


def bench_vla_train(config: dict, variant: str, warmup: int, repeats: int) -> dict:
    import jax
    import numpy as np

    from latent_pretraining.configs.lapa import get_config
    from latent_pretraining.core.optim import build_optimizer
    from latent_pretraining.core.sharding import axis_rules, make_mesh
    from latent_pretraining.core.state import compile_step, create_train_state, global_batch
    from latent_pretraining.core.step import make_train_step
    from latent_pretraining.model import VLAModel
    from latent_pretraining.train import loss_for

    run = get_config("finetune")
    run.model = model_config(config["model"], scan_layers=variant != "finetune_unrolled")
    run.mesh = "1,-1,1,1"
    opt = config["optimizer"]
    run.optimizer.learning_rate = opt["lr"]
    run.optimizer.schedule, run.optimizer.warmup_steps = "constant", 0
    run.optimizer.b1, run.optimizer.b2 = opt["b1"], opt["b2"]
    run.optimizer.weight_decay = opt["weight_decay"]
    run.optimizer.clip_gradient = opt["clip_gradient"]
    objective = {
        "finetune": lambda: loss_for(run),
        "finetune_unrolled": lambda: loss_for(run),
        "lapa_work": lapa_work_loss,
    }
    loss_fn = objective[variant]()

    b, length = config["batch"], config["seq_len"]
    ids, modality = stages.train_rows(config["model"], b, length + 1)
    local = {
        "inputs": ids[:, :-1],
        "modality": modality[:, :-1],
        "targets": ids[:, 1:],
        "target_modality": modality[:, 1:],
        "segment_ids": np.ones((b, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
        "target_weight": np.ones((b, length), np.float32),
    }
    with axis_rules(run.logical_axis_rules):
        mesh = make_mesh(run.mesh)
        optimizer, schedule = build_optimizer(run)
        graphdef, state, shardings = create_train_state(
            lambda rngs: VLAModel(run.model, rngs=rngs), optimizer, mesh, run.seed
        )
        n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
        batch = global_batch(local, mesh)
        t0 = time.perf_counter()
        step = compile_step(
            make_train_step(graphdef, loss_fn, optimizer, schedule), state, batch, shardings, mesh
        )
        compile_s = time.perf_counter() - t0
        times = []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            with jax.set_mesh(mesh):
                state, metrics = step(state, batch)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            if i == 0:
                first_s = compile_s + dt
            if i >= warmup:
                times.append(dt)
    return {
        "times": times,
        "first_s": first_s,
        "compile_s": compile_s,
        "params": int(n_params),
        "loss": float(metrics["loss"]),
    }


def bench_generate(config: dict, warmup: int, repeats: int) -> dict:
    import jax
    from flax import nnx

    from latent_pretraining.core.sharding import create_sharded, make_mesh
    from latent_pretraining.model import VLAModel
    from latent_pretraining.sampler import Sampler

    cfg = model_config(config["model"])
    mesh = make_mesh("1,-1,1,1")
    model = create_sharded(lambda rngs: VLAModel(cfg, rngs=rngs), mesh, seed=0)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    sampler = Sampler(model, mesh=mesh)
    ids, modality = stages.prompt_rows(config["model"], config["batch"], config["prompt_len"])
    sampled = config["vocab"] == "action"  # LAPA's generate_vision always samples (top-k 50)
    times, first_s = [], None
    for i in range(warmup + repeats):
        kwargs = {"temperature": 1.0, "top_k": 50, "rng": jax.random.PRNGKey(i)} if sampled else {}
        t0 = time.perf_counter()
        tokens = sampler.generate(
            ids, modality, vocab=config["vocab"], num_tokens=config["new_tokens"], **kwargs
        )
        dt = time.perf_counter() - t0
        if i == 0:
            first_s = dt
        if i >= warmup:
            times.append(dt)
    return {"times": times, "first_s": first_s, "params": int(n_params), "tokens": tokens.tolist()}


def bench_lam_train(config: dict, variant: str, warmup: int, repeats: int) -> dict:
    import jax
    import numpy as np

    from lam.configs.lam import get_config
    from lam.model import LatentActionModel
    from lam.train import codebook_upkeep, loss_for
    from latent_pretraining.core.optim import build_optimizer
    from latent_pretraining.core.sharding import make_mesh
    from latent_pretraining.core.state import compile_step, create_train_state, global_batch
    from latent_pretraining.core.step import make_train_step

    run = get_config("lapa,nsvq")  # LAPA's heads, token layout and frame target
    m = config["model"]
    for key in ("dim", "quant_dim", "codebook_size", "image_size", "patch_size", "spatial_depth"):
        run.model[key] = m[key]
    for key in ("temporal_depth", "heads", "dim_head", "code_seq_len"):
        run.model[key] = m[key]
    run.model.dtype = "float32"
    opt = config["optimizer"]
    run.optimizer.learning_rate, run.optimizer.schedule, run.optimizer.warmup_steps = opt["lr"], "constant", 0
    run.optimizer.b1, run.optimizer.b2 = opt["b1"], opt["b2"]
    run.optimizer.weight_decay = 0.0  # LAQTrainer's wd=0: plain Adam
    run.optimizer.clip_gradient = opt["clip_gradient"]
    run.batch_size = config["batch"]
    mesh = make_mesh("1,1,1,1")
    size = m["image_size"]
    frames = np.random.default_rng(0).random((config["batch"], 2, size, size, 3)).astype(np.float32)
    optimizer, schedule = build_optimizer(run)
    graphdef, state, shardings = create_train_state(
        lambda rngs: LatentActionModel(run.model, rngs), optimizer, mesh, 0
    )
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    batch = global_batch({"frames": frames}, mesh)

    def compile_train_step():
        train_step = make_train_step(graphdef, loss_for(run), optimizer, schedule, codebook_upkeep)
        return compile_step(train_step, state, batch, shardings, mesh)

    cache = tempfile.TemporaryDirectory() if variant == "cached" else contextlib.nullcontext()
    with cache as cache_dir:
        if cache_dir:  # what a rerun of lam.train finds: the program an earlier run compiled
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            compile_train_step()
        t0 = time.perf_counter()
        step = compile_train_step()
        compile_s = time.perf_counter() - t0
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        loss = float(jax.device_get(metrics["loss"]))
        dt = time.perf_counter() - t0
        if i == 0:
            first_s = compile_s + dt
        if i >= warmup:
            times.append(dt)
    return {"times": times, "first_s": first_s, "compile_s": compile_s, "params": int(n_params), "loss": loss}


def bench_preprocess(config: dict, warmup: int, repeats: int, input_path: str) -> dict:
    times, first_s = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(warmup + repeats):
            out = Path(tmp) / f"run{i}"
            command = [
                sys.executable,
                "-m",
                "data.finetune_preprocess",
                "--input_path",
                input_path,
                "--output_filename",
                f"{out}.jsonl",
                "--csv_filename",
                f"{out}.csv",
                "--discretize_bins",
                str(config["bins"]),
            ]
            t0 = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            dt = time.perf_counter() - t0
            if i == 0:
                first_s = dt
            if i >= warmup:
                times.append(dt)
            rows = stages.count_lines(f"{out}.jsonl")
            if rows != config["rows"]:
                raise SystemExit(f"our preprocess wrote {rows} rows, expected {config['rows']}")
    return {"times": times, "first_s": first_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=sorted(stages.STAGES), required=True)
    p.add_argument(
        "--variant", default="default", help="one of the stage's variants (stages.STAGES[stage]['ours'])"
    )
    p.add_argument("--warmup", type=int, default=stages.TIMING["full"]["warmup"])
    p.add_argument("--repeats", type=int, default=stages.TIMING["full"]["repeats"])
    p.add_argument("--quick", action="store_true", help="the stage's --quick config (fewer preprocess rows)")
    p.add_argument("--input", default="", help="preprocess: the generated finetune JSON")
    args = p.parse_args()
    stage = stages.STAGES[args.stage]
    if args.variant not in stage["ours"]:
        p.error(f"stage {args.stage} has variants {stage['ours']}")
    config = stages.stage_config(args.stage, args.quick)
    if stage["kind"] == "vla_train":
        out = bench_vla_train(config, args.variant, args.warmup, args.repeats)
    elif stage["kind"] == "generate":
        out = bench_generate(config, args.warmup, args.repeats)
    elif stage["kind"] == "lam_train":
        out = bench_lam_train(config, args.variant, args.warmup, args.repeats)
    else:
        if not args.input:
            p.error("preprocess needs --input (compare.py writes it)")
        out = bench_preprocess(config, args.warmup, args.repeats, args.input)
    times = out.pop("times")
    extra = {"variant": args.variant, "warmup": args.warmup, **out, "versions": versions()}
    print(stages.record(SIDE, args.stage, times, config, **extra), flush=True)


if __name__ == "__main__":
    main()
