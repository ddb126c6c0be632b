"""How fast the LAM's encoder learns to see the motion when told it: a ceiling for the codes.

    python benchmarks/bench_lam_encoder_ceiling.py [--steps 400] [--eval_every 100] [--model code_head=lapa]

Trains the ``small`` preset's encoder and code head on the tabletop world (same data and
optimizer as ``bench_lam_quality.py``), with a linear readout of the action vectors (before
quantization), to regress the *true* standardised (dx, dy). Reports the readout's R^2 on
held-out pairs. A LAM at the same step cannot do better: while even this supervised encoder
does not see the motion, the codes cannot carry it. Prints a table and one JSON line per
evaluation. Its twin for the decoder is ``bench_lam_decoder_ceiling.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ceiling import ceiling_parser, load_ceiling_data, train_and_evaluate
from flax import nnx
from report import print_report

from lam import metrics
from lam.layers import Linear
from lam.model import LatentActionModel

PROBED = (0, 1)  # dx, dy
NAMES = ("r2_dx", "r2_dy")


class EncoderReadout(nnx.Module):
    """The LAM's action vectors (before quantization) read out linearly as (dx, dy)."""

    def __init__(self, cfg, rngs: nnx.Rngs):
        self.lam = LatentActionModel(cfg, rngs)
        self.readout = Linear(cfg.code_seq_len * cfg.quant_dim, len(PROBED), rngs)

    def __call__(self, frames: jax.Array) -> jax.Array:
        vectors = self.lam.encode_pair(frames)[2]
        return self.readout(vectors.reshape(len(vectors), -1))


def main() -> None:
    args = ceiling_parser(__doc__, steps=400, eval_every=100).parse_args()
    data = load_ceiling_data(args)
    model = EncoderReadout(data.config.model, nnx.Rngs(data.config.seed))

    def targets(actions):
        return data.standardize(actions)[:, PROBED]

    def loss(model: EncoderReadout, frames: jax.Array, actions: jax.Array) -> jax.Array:
        return jnp.mean(jnp.square(model(frames) - targets(actions)))

    predict = nnx.jit(lambda model, frames: model(frames))

    def evaluate() -> dict[str, float]:
        predicted = np.asarray(predict(model, data.holdout["frames"]))
        scores = metrics.r2_scores(targets(data.holdout["actions"]), predicted, NAMES)
        return dict(zip(NAMES, scores, strict=True))

    rows = train_and_evaluate(data, args, model, loss, evaluate)
    print_report(rows, ("step", "train_mse", *NAMES, "minutes"))


if __name__ == "__main__":
    main()
