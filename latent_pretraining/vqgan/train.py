"""Trains a VQ image tokenizer on the shared training infrastructure.

    python -m latent_pretraining.vqgan train --config=latent_pretraining/configs/vqgan.py:small \\
        --config.run_dir=runs/vq --config.data.path=DIR [--config.data.source=folder]

Loss: mean squared reconstruction error + codebook loss + commitment (``commitment_cost``),
with a straight-through estimator. Codes whose running usage falls below
``restart_threshold / num_codes`` are restarted every ``restart_every`` steps from
encoder outputs of the current global batch (one decision for all devices). Reports
reconstruction PSNR, codebook usage and perplexity on held-out images, saves
reconstruction grids as PNG, and exports ``<run_dir>/vqgan`` (LWM's pickle format)
with ``vqgan_config.json``. A rerun with the same run_dir resumes from its newest checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from latent_pretraining.core import loop
from latent_pretraining.core.batches import BatchStream
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import (
    TrainState,
    batch_sharding,
    compile_step,
    create_train_state,
    global_batch,
)
from latent_pretraining.core.step import make_train_step
from latent_pretraining.episodes import EpisodeFrames, check_source, open_episodes
from latent_pretraining.vqgan.images import augment, lapa_resize, to_model_range
from latent_pretraining.vqgan.lwm_checkpoint import save_lwm_vqgan
from latent_pretraining.vqgan.model import VQGAN


def psnr(mse: jax.Array) -> jax.Array:
    """PSNR of images in [-1, 1] (peak-to-peak 2)."""
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def code_statistics(codes: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Code frequencies, the fraction of codes used at least once, and the perplexity."""
    counts = jnp.bincount(codes.reshape(-1), length=num_codes).astype(jnp.float32)
    freq = counts / jnp.maximum(counts.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(freq > 0, freq * jnp.log(jnp.maximum(freq, 1e-12)), 0.0))
    return freq, jnp.mean(counts > 0), jnp.exp(entropy)


def loss_for(config: ml_collections.ConfigDict):
    """VQ-VAE loss (reconstruction + codebook + commitment, straight-through) and batch code stats."""
    num_codes = config.model.num_embeddings

    def loss_fn(model: VQGAN, batch: dict[str, jax.Array], rng: jax.Array):
        images = batch["images"]
        z = model.pre_quant(images)
        codes = model.nearest_codes(jax.lax.stop_gradient(z))
        e = jnp.take(model.codebook[...], codes, axis=0)
        z_q = z + jax.lax.stop_gradient(e - z)  # straight-through
        recon = model.decoder(model.post_quant_conv(z_q)).astype(jnp.float32)
        rec = jnp.mean((recon - images) ** 2)
        codebook = jnp.mean((jax.lax.stop_gradient(z) - e) ** 2)
        commit = jnp.mean((z - jax.lax.stop_gradient(e)) ** 2)
        _, used, perplexity = code_statistics(codes, num_codes)
        scores = {
            "rec_mse": rec,
            "codebook_loss": codebook,
            "commit_loss": commit,
            "psnr": psnr(rec),
            "batch_code_usage": used,
            "batch_perplexity": perplexity,
        }
        return rec + codebook + config.commitment_cost * commit, scores, (codes, z)

    return loss_fn


def restarts_for(config: ml_collections.ConfigDict):
    """Decayed code usage, and every ``restart_every`` steps dead codes moved onto batch vectors."""
    num_codes = config.model.num_embeddings

    def restart_dead_codes(model: VQGAN, carry, step: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        codes, z = carry
        freq, _, _ = code_statistics(codes, num_codes)
        usage = config.usage_decay * model.code_usage[...] + (1 - config.usage_decay) * freq
        dead = usage < config.restart_threshold / num_codes
        restart = jnp.zeros_like(dead)
        if config.restart_every:
            restart = dead & (step % config.restart_every == 0)
            flat = z.reshape(-1, z.shape[-1])
            candidates = flat[jax.random.randint(rng, (num_codes,), 0, flat.shape[0])]
            model.codebook[...] = jnp.where(
                restart[:, None], candidates.astype(jnp.float32), model.codebook[...]
            )
            usage = jnp.where(restart, 1.0 / num_codes, usage)
        model.code_usage[...] = usage
        return {"dead_codes": jnp.sum(dead), "restarts": jnp.sum(restart)}

    return restart_dead_codes


def image_batches(source, rows_total: int, config: ml_collections.ConfigDict, size: int) -> BatchStream:
    per_host = config.batch_size // jax.process_count()

    def make_batch(rows: np.ndarray, epoch: int, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([config.seed, epoch, index, jax.process_index()])
        images = []
        for r in rows:
            image = lapa_resize(source[int(r)], size)
            if config.data.augment:
                image = augment(image, rng)
            images.append(to_model_range(image))
        return {"images": np.stack(images)}

    return BatchStream(rows_total, per_host, make_batch, seed=config.seed)


def save_grid(originals: np.ndarray, recons: np.ndarray, path: Path) -> None:
    """Rows of (original, reconstruction) pairs as one PNG."""
    to_uint8 = lambda x: np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)  # noqa: E731
    pairs = [
        np.concatenate([to_uint8(o), to_uint8(r)], axis=1) for o, r in zip(originals, recons, strict=True)
    ]
    Image.fromarray(np.concatenate(pairs, axis=0)).save(path)


def make_eval(
    graphdef: nnx.GraphDef, holdout: np.ndarray, mesh, config: ml_collections.ConfigDict, run_dir: Path
):
    """Held-out PSNR with hard codes, codebook usage and perplexity; saves a reconstruction grid."""
    num_codes = config.model.num_embeddings
    n = len(holdout) - len(holdout) % mesh.size or len(holdout)
    images = jax.device_put(holdout[:n], batch_sharding(mesh, 4, holdout[:n].shape))

    @jax.jit
    def evaluate(params, rest, images):
        model = nnx.merge(graphdef, params, rest)
        _, codes = model.encode(images)
        recon = model.decode_codes(codes)
        _, used, perplexity = code_statistics(codes, num_codes)
        mse = jnp.mean((recon - images) ** 2, axis=(1, 2, 3))
        return recon, jnp.mean(psnr(mse)), used, perplexity

    def run(state: TrainState, step: int) -> dict[str, float]:
        with jax.set_mesh(mesh):
            recon, mean_psnr, used, perplexity = evaluate(state["params"], state["rest"], images)
        if jax.process_index() == 0:
            save_grid(holdout[:8], np.asarray(jax.device_get(recon))[:8], run_dir / f"recon_{step:07d}.png")
        return {"psnr": float(mean_psnr), "code_usage": float(used), "perplexity": float(perplexity)}

    return run


def open_frames(data: ml_collections.ConfigDict) -> EpisodeFrames:
    """Every frame of the episodes of ``data.source`` at ``data.path``; the first ``data.limit`` (0: all)."""
    check_source(data.source, data.path, "--config.data.path")
    options = {"max_frames": data.limit} if data.source == "rlds" else {}  # reads no more than it keeps
    return EpisodeFrames(open_episodes(data.source, data.path, **options), data.limit)


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
    run_dir = loop.prepare_run(config)
    mesh = make_mesh(config.mesh)
    size = config.model.resolution
    source = open_frames(config.data)
    if len(source) <= config.data.holdout:
        raise ValueError(
            f"{len(source)} images leave none for training after holding out {config.data.holdout}"
        )
    holdout_rows = np.random.default_rng(config.seed).permutation(len(source))[: config.data.holdout]
    holdout = np.stack([to_model_range(lapa_resize(source[int(i)], size)) for i in holdout_rows])
    train_rows = np.setdiff1d(np.arange(len(source)), holdout_rows)

    class TrainRows:  # the source without the held-out images
        def __len__(self):
            return len(train_rows)

        def __getitem__(self, i):
            return source[int(train_rows[i])]

    data = image_batches(TrainRows(), len(train_rows), config, size)
    optimizer, schedule = build_optimizer(config)
    graphdef, state, shardings = create_train_state(
        lambda rngs: VQGAN(config.model, rngs=rngs), optimizer, mesh, config.seed
    )
    checkpointer = loop.checkpointer_for(config, run_dir)
    state, start = loop.resume(checkpointer, state, data)
    logger = loop.logger_for(config, run_dir)
    example = global_batch(data.peek(), mesh)
    step = make_train_step(graphdef, loss_for(config), optimizer, schedule, restarts_for(config))
    step_fn = compile_step(step, state, example, shardings, mesh)
    settings = loop.settings_for(config, "vqgan", "images")
    state, last = loop.run(
        settings,
        step_fn,
        state,
        data,
        mesh,
        checkpointer,
        logger,
        make_eval(graphdef, holdout, mesh, config, run_dir),
        start,
    )
    model = nnx.merge(graphdef, state["params"], state["rest"])
    if jax.process_index() == 0:
        save_lwm_vqgan(model, run_dir / "vqgan")
        (run_dir / "vqgan_config.json").write_text(config.model.to_json(indent=2))
        print(f"exported {run_dir / 'vqgan'} (LWM pickle) and {run_dir / 'vqgan_config.json'}")
    return last


def main(argv: list[str]) -> None:
    loop.config_main(train, "latent_pretraining/configs/vqgan.py:small", argv)
