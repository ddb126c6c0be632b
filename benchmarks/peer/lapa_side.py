"""LAPA's side of the peer harness: times LAPA's own code at a stage of ``stages.py``.

Runs inside LAPA's virtualenv (``setup_lapa_env.sh``) with a LAPA checkout and a tux checkout:

    .venv-lapa/bin/python benchmarks/peer/lapa_side.py --stage vla_24m \\
        --lapa_src ~/src/LAPA --tux_src ~/src/tux [--warmup 1 --repeats 5] [--quick]
    .venv-lapa/bin/python benchmarks/peer/lapa_side.py --check   # imports everything, times nothing

Prints one JSON line per measurement (``stages.record``). What runs, per stage kind:

- ``vla_train``: the ``vision,action,delta`` branch of LAPA's ``latent_pretraining/train.py``
  ``train_step`` (the finetune step): ``FlaxDeltaActionLaMAForCausalLMModule.apply`` scoring all four
  heads, tux's ``cross_entropy_loss_and_accuracy`` for each, ``loss = action_loss``, the gradient,
  ``TrainState.apply_gradients`` with tux's ``OptimizerFactory`` AdamW, the same metrics, under
  ``pjit`` with LAPA's partition rules and donation; a step is the call plus ``device_get`` of
  the metrics (the finetune jobs log every step). That step is a closure inside train.py's
  ``main`` (which also needs TensorFlow, wandb and a dataset), so this file restates its body.
- ``generate``: LAPA's samplers' own ``_forward_generate`` (``DeltaSampler`` from
  ``sampler_latent_pretrain`` for latent tokens, ``DeltaActionSampler`` from
  ``sampler_latent_action_pretrain`` for action tokens) on a token prompt, as their
  ``generate_video_pred`` calls it (VQGAN encoding and tokenisation excluded); random weights.
- ``lam_train``: ``laq_model.LatentActionQuantization`` with LAQTrainer.train_step's work: forward
  with ``step``, backward, ``clip_grad_norm_`` at 0.5, ``laq_model.optimizer.get_optimizer`` (Adam at
  wd 0), ``zero_grad``, ``loss.item()``. Two run-time patches, no file edits: NSVQ is built on the
  CPU (LAPA hard-codes ``device='cuda'``) and ``laq_model/__init__`` (which imports the trainer,
  accelerate, wandb, torchvision) is bypassed. ``step`` starts at 5001, past LAPA's codebook
  replacement schedule.
- ``preprocess``: LAPA's ``data/finetune_preprocess.py`` as a whole process on the input JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask the network at import
sys.path.insert(0, str(HERE))

import stages  # noqa: E402

SIDE = "lapa"


def add_sources(lapa_src: str, tux_src: str) -> None:
    for path in (lapa_src, tux_src):
        if not path or not Path(path).is_dir():
            raise SystemExit(f"source checkout {path!r} not found: pass --lapa_src and --tux_src")
    sys.path[:0] = [lapa_src, tux_src]


def lapa_config(config_cls, model: dict, mesh_dim: str, **extra):
    """VideoLLaMAConfig from our field names (see stages.VLA_24M)."""
    return config_cls(
        vocab_size=model["text_vocab_size"],
        vision_vocab_size=model["vision_vocab_size"],
        delta_vocab_size=model["latent_vocab_size"],
        hidden_size=model["hidden_size"],
        intermediate_size=model["intermediate_size"],
        num_hidden_layers=model["num_layers"],
        num_attention_heads=model["num_heads"],
        max_sequence_length=model["max_sequence_length"],
        theta=model["rope_theta"],
        rms_norm_eps=model["rms_norm_eps"],
        initializer_range=model["initializer_range"],
        remat_block="nothing_saveable" if model["remat"] else "",
        scan_layers=True,
        param_scan_axis=0,
        bos_token_id=1,
        eos_token_id=2,
        mesh_dim=mesh_dim,
        **extra,
    )


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "flax", "optax", "transformers", "numpy", "torch", "pandas"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def bench_vla_train(config: dict, warmup: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax.training.train_state import TrainState
    from jax.experimental.pjit import pjit
    from jax.sharding import PartitionSpec
    from latent_pretraining.delta_llama_action import FlaxDeltaActionLaMAForCausalLMModule, VideoLLaMAConfig
    from tux import (
        JaxRNG,
        OptimizerFactory,
        cross_entropy_loss_and_accuracy,
        get_float_dtype_by_name,
        get_mask,
        global_norm,
        match_partition_rules,
        next_rng,
        set_random_seed,
        with_sharding_constraint,
    )

    model_cfg, opt = config["model"], config["optimizer"]
    mesh_dim = "1,-1,1,1"
    set_random_seed(42)
    llama_config = lapa_config(
        VideoLLaMAConfig, model_cfg, mesh_dim, action_vocab_size=model_cfg["action_vocab_size"]
    )
    mesh = VideoLLaMAConfig.get_jax_mesh(mesh_dim)
    model = FlaxDeltaActionLaMAForCausalLMModule(llama_config, dtype=get_float_dtype_by_name("fp32"))
    optimizer, optimizer_info = OptimizerFactory.get_optimizer(
        {
            "type": "adamw",
            "accumulate_gradient_steps": 1,
            "adamw_optimizer": {
                "lr": opt["lr"],
                "end_lr": opt["lr"],
                "lr_warmup_steps": 0,
                "lr_decay_steps": 100,
                "weight_decay": opt["weight_decay"],
                "b1": opt["b1"],
                "b2": opt["b2"],
                "clip_gradient": opt["clip_gradient"],
            },
        },
        get_mask(VideoLLaMAConfig.get_weight_decay_exclusions()),
        None,
    )
    seq_len = config["seq_len"]

    def init_fn(rng):
        rng_generator = JaxRNG(rng)
        shape = (1, seq_len)  # train.py inits at batch 512; the parameters do not depend on it
        params = model.init(
            input_ids=jnp.zeros(shape, dtype=jnp.int32),
            vision_masks=jnp.zeros(shape, dtype=bool),
            delta_masks=jnp.zeros(shape, dtype=bool),
            action_masks=jnp.zeros(shape, dtype=bool),
            position_ids=jnp.zeros(shape, dtype=jnp.int32),
            attention_mask=jnp.ones(shape, dtype=jnp.int32),
            rngs=rng_generator(llama_config.rng_keys()),
        )
        return TrainState.create(params=params, tx=optimizer, apply_fn=None)

    def train_step(train_state, rng, batch):
        rng_generator = JaxRNG(rng)
        batch = with_sharding_constraint(batch, PartitionSpec(("dp", "fsdp"), "sp"))

        def loss_and_accuracy(params):
            vision_logits, text_logits, delta_logits, action_logits = model.apply(
                params,
                batch["input_tokens"],
                batch["input_vision_masks"],
                batch["input_delta_masks"],
                batch["input_action_masks"],
                deterministic=False,
                rngs=rng_generator(llama_config.rng_keys()),
            ).logits
            masks = batch["loss_masks"]
            tv, td, ta = (batch[f"target_{k}_masks"] for k in ("vision", "delta", "action"))
            delta_loss, delta_acc = cross_entropy_loss_and_accuracy(
                delta_logits, jnp.where(td, batch["target_tokens"], 0), masks * td
            )
            action_loss, action_acc = cross_entropy_loss_and_accuracy(
                action_logits, jnp.where(ta, batch["target_tokens"], 0), masks * ta
            )
            vision_loss, vision_acc = cross_entropy_loss_and_accuracy(
                vision_logits, jnp.where(tv, batch["target_tokens"], 0), masks * tv
            )
            text = (1.0 - tv) * (1.0 - td) * (1.0 - ta)
            text_loss, text_acc = cross_entropy_loss_and_accuracy(
                text_logits, jnp.where(text, batch["target_tokens"], 0), masks * text
            )
            metrics = dict(
                vision_loss=vision_loss,
                vision_acc=vision_acc,
                text_loss=text_loss,
                text_acc=text_acc,
                delta_loss=delta_loss,
                delta_acc=delta_acc,
                action_loss=action_loss,
                action_acc=action_acc,
            )
            return action_loss, metrics

        (loss, loss_metrics), grads = jax.value_and_grad(loss_and_accuracy, has_aux=True)(train_state.params)
        train_state = train_state.apply_gradients(grads=grads)
        metrics = dict(
            loss=loss,
            learning_rate=optimizer_info["learning_rate_schedule"](train_state.step),
            param_norm=global_norm(train_state.params),
            gradient_norm=global_norm(grads),
            **loss_metrics,
        )
        return train_state, rng_generator(), metrics

    shapes = jax.eval_shape(init_fn, next_rng())
    partition = match_partition_rules(
        VideoLLaMAConfig.get_partition_rules(llama_config.scan_layers, llama_config.param_scan_axis), shapes
    )
    sharded_init = pjit(init_fn, in_shardings=PartitionSpec(), out_shardings=partition)
    batch_spec = PartitionSpec(("dp", "fsdp"), "sp")
    sharded_step = pjit(
        train_step,
        in_shardings=(partition, PartitionSpec(), batch_spec),
        out_shardings=(partition, PartitionSpec(), PartitionSpec()),
        donate_argnums=(0, 1),
    )

    ids, modality = stages.train_rows(model_cfg, config["batch"], seq_len + 1)
    inputs, targets = slice(None, -1), slice(1, None)
    batch = {"input_tokens": ids[:, inputs], "target_tokens": ids[:, targets]}
    batch["loss_masks"] = np.ones(batch["input_tokens"].shape, np.float32)
    for name, m in (("vision", stages.VISION), ("delta", stages.LATENT), ("action", stages.ACTION)):
        batch[f"input_{name}_masks"] = modality[:, inputs] == m
        batch[f"target_{name}_masks"] = modality[:, targets] == m

    with mesh:
        state = sharded_init(next_rng())
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
        rng = next_rng()
        times = []
        first_s = None
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            state, rng, metrics = sharded_step(state, rng, batch)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            if i == 0:
                first_s = dt
            if i >= warmup:
                times.append(dt)
    return {"times": times, "first_s": first_s, "params": n_params, "loss": float(metrics["loss"])}


class _TokenIds:
    """What the samplers read from their tokenizer inside ``_forward_generate``."""

    pad_token_id = 0
    eos_token_id = 2


def bench_generate(config: dict, warmup: int, repeats: int) -> dict:
    import jax
    import numpy as np
    from tux import (
        get_float_dtype_by_name,
        make_shard_and_gather_fns,
        match_partition_rules,
        next_rng,
        set_random_seed,
        tree_apply,
    )

    set_random_seed(1234)  # as LAPA's inference.py / deploy.py do before building the sampler
    model_cfg = config["model"]
    mesh_dim = "1,-1,1,1"
    if config["vocab"] == "latent":  # latent pretraining's sampler: delta_llama, model.generate
        from latent_pretraining.delta_llama import FlaxVideoLLaMAForCausalLM, VideoLLaMAConfig
        from latent_pretraining.sampler_latent_pretrain import DeltaSampler

        sampler_cls = DeltaSampler

        extra = {}
    else:  # the finetuned model's sampler: delta_llama_action, model.generate_vision
        from latent_pretraining.delta_llama_action import FlaxVideoLLaMAForCausalLM, VideoLLaMAConfig
        from latent_pretraining.sampler_latent_action_pretrain import DeltaActionSampler

        sampler_cls = DeltaActionSampler

        extra = {"action_vocab_size": model_cfg["action_vocab_size"]}
    llama_config = lapa_config(VideoLLaMAConfig, model_cfg, mesh_dim, **extra)
    dtype = get_float_dtype_by_name("fp32")
    # the samplers load released params; random ones here, laid out and sharded the same way
    model = FlaxVideoLLaMAForCausalLM(llama_config, input_shape=(1, 8), seed=1234, dtype=dtype)
    params = {"params": model.params}
    sampler = sampler_cls.__new__(sampler_cls)  # skip __init__: it loads VQGAN, tokenizer and checkpoint
    sampler.mesh = VideoLLaMAConfig.get_jax_mesh(mesh_dim)
    sampler.tokenizer = _TokenIds()
    sampler.config = llama_config
    sampler.model = FlaxVideoLLaMAForCausalLM(
        llama_config, input_shape=(512, 8192), seed=1234, _do_init=False, dtype=dtype
    )
    sampler.model_ps = match_partition_rules(
        VideoLLaMAConfig.get_partition_rules(llama_config.scan_layers, llama_config.param_scan_axis), params
    )
    shard_fns, _ = make_shard_and_gather_fns(sampler.model_ps, dtype)
    with sampler.mesh:
        sampler.params = tree_apply(shard_fns, params)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))

    ids, modality = stages.prompt_rows(model_cfg, config["batch"], config["prompt_len"])
    batch = {
        "input_ids": ids,
        "attention_mask": np.ones(ids.shape, np.int32),
        "vision_masks": modality == stages.VISION,
        "delta_masks": np.zeros(ids.shape, bool),
    }
    if config["vocab"] == "action":
        batch["action_masks"] = np.zeros(ids.shape, bool)
    times, first_s = [], None
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        with sampler.mesh:  # generate_video_pred's part after tokenisation
            output, _ = sampler._forward_generate(sampler.params, next_rng(), batch, config["new_tokens"])
            output = jax.device_get(output)
        dt = time.perf_counter() - t0
        if i == 0:
            first_s = dt
        if i >= warmup:
            times.append(dt)
    assert output.shape == (config["batch"], config["new_tokens"]), output.shape
    return {"times": times, "first_s": first_s, "params": n_params, "tokens": output.tolist()}


def import_laq(lapa_src: str):
    """LAPA's laq_model modules without its package __init__ (which imports the trainer)."""
    package = types.ModuleType("laq_model")
    package.__path__ = [str(Path(lapa_src) / "laq" / "laq_model")]
    sys.modules["laq_model"] = package
    import laq_model.latent_action_quantization as laq
    import laq_model.optimizer as laq_optimizer

    nsvq = laq.NSVQ

    def nsvq_on_cpu(*args, **kwargs):
        kwargs["device"] = "cpu"  # LAPA passes device='cuda'
        return nsvq(*args, **kwargs)

    laq.NSVQ = nsvq_on_cpu
    return laq, laq_optimizer


def bench_lam_train(config: dict, warmup: int, repeats: int, lapa_src: str) -> dict:
    import torch

    laq, laq_optimizer = import_laq(lapa_src)
    torch.manual_seed(0)
    model = laq.LatentActionQuantization(**config["model"])
    opt = config["optimizer"]
    # LAQTrainer: get_optimizer(set(vae.parameters()), lr=lr, wd=wd) with its default wd=0 -> Adam
    optim = laq_optimizer.get_optimizer(
        set(model.parameters()), lr=opt["lr"], wd=0.0, betas=(opt["b1"], opt["b2"]), eps=opt["eps"]
    )
    size = config["model"]["image_size"]
    video = torch.rand(config["batch"], 3, 2, size, size)  # (B, C, T, H, W) in [0, 1]
    n_params = sum(p.numel() for p in model.parameters())
    times, first_s = [], None
    model.train()
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        loss, _ = model(video, step=5001 + i)  # (loss, number of distinct codes)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt["clip_gradient"])
        optim.step()
        optim.zero_grad()
        loss_value = loss.item()
        dt = time.perf_counter() - t0
        if i == 0:
            first_s = dt
        if i >= warmup:
            times.append(dt)
    return {
        "times": times,
        "first_s": first_s,
        "params": n_params,
        "loss": loss_value,
        "torch_threads": torch.get_num_threads(),
    }


def bench_preprocess(config: dict, warmup: int, repeats: int, lapa_src: str, input_path: str) -> dict:
    script = Path(lapa_src) / "data" / "finetune_preprocess.py"
    times, first_s = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(warmup + repeats):
            out = Path(tmp) / f"run{i}"
            command = [
                sys.executable,
                str(script),
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
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            dt = time.perf_counter() - t0
            if i == 0:
                first_s = dt
            if i >= warmup:
                times.append(dt)
            rows = stages.count_lines(f"{out}.jsonl")
            if rows != config["rows"]:
                raise SystemExit(f"LAPA's preprocess wrote {rows} rows, expected {config['rows']}")
    return {"times": times, "first_s": first_s}


def check(lapa_src: str) -> None:
    """Imports every module the stages use, so a broken environment fails at set-up."""
    import latent_pretraining.delta_llama_action
    import latent_pretraining.sampler_latent_action_pretrain
    import latent_pretraining.sampler_latent_pretrain  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401

    import_laq(lapa_src)
    print("lapa side: imports ok", versions())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=sorted(stages.STAGES))
    p.add_argument("--lapa_src", default=os.environ.get("LAPA_SRC", ""))
    p.add_argument("--tux_src", default=os.environ.get("TUX_SRC", ""))
    p.add_argument("--warmup", type=int, default=stages.TIMING["full"]["warmup"])
    p.add_argument("--repeats", type=int, default=stages.TIMING["full"]["repeats"])
    p.add_argument("--quick", action="store_true", help="the stage's --quick config (fewer preprocess rows)")
    p.add_argument("--input", default="", help="preprocess: the generated finetune JSON")
    p.add_argument("--check", action="store_true", help="import everything and exit")
    args = p.parse_args()
    add_sources(args.lapa_src, args.tux_src)
    if args.check:
        check(args.lapa_src)
        return
    if not args.stage:
        p.error("--stage is required")
    kind = stages.STAGES[args.stage]["kind"]
    config = stages.stage_config(args.stage, args.quick)
    if kind == "vla_train":
        out = bench_vla_train(config, args.warmup, args.repeats)
    elif kind == "generate":
        out = bench_generate(config, args.warmup, args.repeats)
    elif kind == "lam_train":
        out = bench_lam_train(config, args.warmup, args.repeats, args.lapa_src)
    else:
        if not args.input:
            p.error("preprocess needs --input (compare.py writes it)")
        out = bench_preprocess(config, args.warmup, args.repeats, args.lapa_src, args.input)
    times = out.pop("times")
    extra = {"variant": "lapa", "warmup": args.warmup, **out, "versions": versions()}
    print(stages.record(SIDE, args.stage, times, config, **extra), flush=True)
    print(f"# lapa {args.stage}: median {statistics.median(times):.4f} s over {len(times)}", file=sys.stderr)


if __name__ == "__main__":
    main()
