"""How fast the LAM's decoder learns to use perfect action information: a ceiling for the codes.

    python benchmarks/bench_lam_decoder_ceiling.py [--steps 1500] [--eval_every 500] [--model motion_kernel=0]

Trains the ``small`` preset's decoder (its kernel decoder; ``--model motion_kernel=0`` for LAPA's
pixel head) on the tabletop world (same data and optimizer as ``bench_lam_quality.py``) with the
*true* actions in place of the quantized action vectors: a fixed random linear map of the
standardised (dx, dy, dz, dyaw, gripper) to the ``code_seq_len x quant_dim`` vectors the decoder
normally receives. Reports, on held-out pairs, the PSNR gain over copying x_t and the action
sensitivity (true actions vs another pair's). A LAM at the same step cannot do better: while its
decoder cannot yet exploit even the true action, the codes have little reason to carry it.
Prints a table and one JSON line per evaluation. Its twin for the encoder is ``bench_lam_encoder_ceiling.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ceiling import ceiling_parser, load_ceiling_data, train_and_evaluate
from flax import nnx
from report import print_report

from lam import metrics
from lam.model import LatentActionModel

ACTION_DIMS = (0, 1, 2, 5, 6)  # dx, dy, dz, dyaw, gripper (the tabletop world has no roll/pitch)


def main() -> None:
    args = ceiling_parser(__doc__, steps=1500, eval_every=500).parse_args()
    data = load_ceiling_data(args)
    cfg = data.config.model
    lift = jax.random.normal(jax.random.key(1), (len(ACTION_DIMS), cfg.code_seq_len * cfg.quant_dim))
    lift = lift / np.sqrt(len(ACTION_DIMS))

    def action_vectors(actions: jax.Array) -> jax.Array:
        a = data.standardize(actions)[:, ACTION_DIMS]
        return (a @ lift).reshape(len(actions), cfg.code_seq_len, cfg.quant_dim)

    def predict(model: LatentActionModel, frames: jax.Array, actions: jax.Array):
        """(prediction of x_{t+H}, its target) from x_t and the true actions."""
        frames = model.prepare(frames)
        return model.predict(frames, action_vectors(actions)), frames[:, 1]

    def loss(model: LatentActionModel, frames: jax.Array, actions: jax.Array) -> jax.Array:
        recon, target = predict(model, frames, actions)
        return jnp.mean(jnp.square(recon - target))

    model = LatentActionModel(cfg, nnx.Rngs(data.config.seed))

    @nnx.jit
    def outputs(model, frames, actions):
        own, target = predict(model, frames, actions)
        swapped, _ = predict(model, frames, jnp.roll(actions, 1, axis=0))
        return own, swapped, target

    def evaluate() -> dict[str, float]:
        holdout = data.holdout
        own, swapped, target = (np.asarray(x) for x in outputs(model, holdout["frames"], holdout["actions"]))
        gain = metrics.copy_baseline_gain(own, holdout["frames"][:, 0], target)  # x_t is never rescaled
        sensitivity = metrics.action_sensitivity(
            metrics.psnr(metrics.per_image_mse(own, target)),
            metrics.psnr(metrics.per_image_mse(swapped, target)),
        )
        return {"psnr_gain": gain["psnr_gain"], "action_sensitivity": sensitivity}

    rows = train_and_evaluate(data, args, model, loss, evaluate)
    print_report(rows, ("step", "train_mse", "psnr_gain", "action_sensitivity", "minutes"))


if __name__ == "__main__":
    main()
