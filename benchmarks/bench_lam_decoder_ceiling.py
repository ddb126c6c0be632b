"""How fast the LAM's decoder learns to use perfect action information: a ceiling for the codes.

    python benchmarks/bench_lam_decoder_ceiling.py [--steps 1500] [--eval_every 500] [--model motion_kernel=7]

Trains the ``small`` preset's decoder on the tabletop world (same data and optimizer as
``bench_lam_quality.py``) with the *true* actions in place of the quantized action vectors: a
fixed random linear map of the standardised (dx, dy, dz, dyaw, gripper) to the
``code_seq_len x quant_dim`` vectors the decoder normally receives. Reports, on held-out pairs,
the PSNR gain over copying x_t and the action sensitivity (true actions vs another pair's). A
LAM at the same step cannot do better: while its decoder cannot yet exploit even the true
action, the codes have little reason to carry it. Prints a table and one JSON line per evaluation.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from report import add_model_argument, override_model, print_report

from lam import metrics
from lam.configs.lam import get_config
from lam.data import PairBatches, pair_actions
from lam.model import LatentActionModel
from lam.train import build_optimizer, load_pairs

ACTION_DIMS = (0, 1, 2, 5, 6)  # dx, dy, dz, dyaw, gripper (the tabletop world has no roll/pitch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval_every", type=int, default=500)
    p.add_argument("--episodes", type=int, default=150)
    p.add_argument("--noise", type=float, default=1.0, help="expert action noise")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval_pairs", type=int, default=512)
    add_model_argument(p)
    args = p.parse_args()

    config = get_config("small")
    override_model(config.model, args.model)
    config.total_steps, config.learning_rate = args.steps, args.lr
    config.data.episodes, config.data.noise = args.episodes, args.noise
    episodes, train_pairs, holdout_pairs = load_pairs(config)
    batches, size, cfg = PairBatches(episodes), config.model.image_size, config.model
    rng = np.random.default_rng(config.seed)
    holdout = batches.make_batch(holdout_pairs[: args.eval_pairs], size)
    train_actions = pair_actions(episodes, train_pairs)
    mean, std = train_actions.mean(0), train_actions.std(0) + 1e-8
    lift = jax.random.normal(jax.random.key(1), (len(ACTION_DIMS), cfg.code_seq_len * cfg.quant_dim))
    lift = lift / np.sqrt(len(ACTION_DIMS))

    def action_vectors(actions: jax.Array) -> jax.Array:
        a = ((actions - mean) / std)[:, ACTION_DIMS]
        return (a @ lift).reshape(len(actions), cfg.code_seq_len, cfg.quant_dim)

    def predict(model: LatentActionModel, frames: jax.Array, actions: jax.Array):
        """(prediction of x_{t+H}, its target) from x_t and the true actions."""
        frames = model.prepare(frames)
        return model.predict(frames, action_vectors(actions)), frames[:, 1]

    model = LatentActionModel(cfg, nnx.Rngs(config.seed))
    optimizer = nnx.Optimizer(model, build_optimizer(config), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, frames, actions):
        def loss_fn(model):
            recon, target = predict(model, frames, actions)
            return jnp.mean(jnp.square(recon - target))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model, frames, actions):
        own, target = predict(model, frames, actions)
        swapped, _ = predict(model, frames, jnp.roll(actions, 1, axis=0))
        return own, swapped, target

    rows, began, losses = [], time.perf_counter(), []
    for i in range(1, args.steps + 1):
        batch = batches.make_batch(train_pairs[rng.integers(0, len(train_pairs), config.batch_size)], size)
        frames, actions = jnp.asarray(batch["frames"]), jnp.asarray(batch["actions"])
        losses.append(step(model, optimizer, frames, actions))  # read back only when evaluating
        if i % args.eval_every == 0 or i == args.steps:
            outputs = evaluate(model, holdout["frames"], holdout["actions"])
            own, swapped, target = (np.asarray(x) for x in outputs)
            gain = metrics.copy_baseline_gain(own, holdout["frames"][:, 0], target)  # x_t is never rescaled
            sensitivity = metrics.action_sensitivity(
                metrics.psnr(metrics.per_image_mse(own, target)),
                metrics.psnr(metrics.per_image_mse(swapped, target)),
            )
            rows.append(
                {
                    "step": i,
                    "train_mse": round(float(np.mean(jax.device_get(losses[-100:]))), 6),
                    "psnr_gain": round(gain["psnr_gain"], 2),
                    "action_sensitivity": round(sensitivity, 2),
                    "minutes": round((time.perf_counter() - began) / 60, 1),
                }
            )
            print(f"step {i}: gain {gain['psnr_gain']:+.2f}, sensitivity {sensitivity:+.2f} dB", flush=True)
    print_report(rows, ("step", "train_mse", "psnr_gain", "action_sensitivity", "minutes"))


if __name__ == "__main__":
    main()
