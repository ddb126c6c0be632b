"""Latent-to-action decoder: latent action codes (optionally with the proprioceptive state)
-> the continuous 7-D end-effector command.

It lets a latent-pretrained VLA act without full finetuning: the VLA predicts 4 latent
codes, this small MLP maps them to ``dx, dy, dz, droll, dpitch, dyaw, gripper``. Trained on
labeled rows ``{"delta": [codes], "raw_actions": [7 floats], "state": [floats] (optional)}``
on the shared training infrastructure:

    python -m latent_pretraining.actions.decoder train \\
        --config=latent_pretraining/configs/action_decoder.py --config.run_dir=runs/decoder \\
        --config.data.train=labeled.jsonl --config.data.eval=held_out.jsonl

Continuous dimensions are regressed on standardised targets; the gripper is a binary
classifier (closed when its probability is >= 0.5).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from latent_pretraining.actions.spec import ACTION_DIMS, DELTA_DIMS
from latent_pretraining.core import loop
from latent_pretraining.core.batches import BatchStream
from latent_pretraining.core.files import write_together
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import compile_step, create_train_state, global_batch
from latent_pretraining.core.step import make_train_step


class ActionDecoder(nnx.Module):
    """Embeds each code (per position), concatenates them with the state, and an MLP
    predicts 6 standardised continuous values and a gripper logit."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.num_codes, self.codebook = cfg.num_codes, cfg.codebook_size
        self.embed = nnx.Embed(cfg.num_codes * cfg.codebook_size, cfg.embed_dim, rngs=rngs)
        width = cfg.num_codes * cfg.embed_dim + cfg.state_dim
        layers = []
        for _ in range(cfg.num_layers):
            layers.append(nnx.Linear(width, cfg.hidden_dim, rngs=rngs))
            width = cfg.hidden_dim
        self.layers = nnx.List(layers)
        self.out = nnx.Linear(width, ACTION_DIMS, rngs=rngs)
        self.mean = nnx.Variable(jnp.zeros(DELTA_DIMS))  # target statistics, set from the data
        self.std = nnx.Variable(jnp.ones(DELTA_DIMS))

    def __call__(self, codes: jax.Array, state: jax.Array | None = None) -> jax.Array:
        """codes [B, num_codes] int -> raw outputs [B, 7] (6 standardised values, gripper logit)."""
        offsets = jnp.arange(self.num_codes) * self.codebook
        x = self.embed(codes + offsets).reshape(codes.shape[0], -1)
        if state is not None:
            x = jnp.concatenate([x, state], axis=-1)
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        return self.out(x)

    def predict(self, codes: jax.Array, state: jax.Array | None = None) -> jax.Array:
        """Continuous 7-D actions in the data's units (gripper 0/1)."""
        raw = self(codes, state)
        continuous = raw[:, :-1] * self.std[...] + self.mean[...]
        gripper = (raw[:, -1:] >= 0).astype(continuous.dtype)
        return jnp.concatenate([continuous, gripper], axis=-1)


def save_decoder(model: ActionDecoder, cfg: ml_collections.ConfigDict, directory: str | os.PathLike) -> None:
    """Writes ``config.json`` (the model config) and ``params.npz`` (every variable by its path), both
    or neither (a directory written beside and renamed over ``directory``)."""
    flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(cfg.to_json(indent=2))
        np.savez(tmp / "params.npz", **flat)

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    write_together([(directory, write)])


def load_decoder(directory: str | os.PathLike) -> ActionDecoder:
    """The decoder ``save_decoder`` wrote; a missing or misshapen variable is an error naming the file."""
    directory = Path(directory)
    cfg = ml_collections.ConfigDict(json.loads((directory / "config.json").read_text()))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ActionDecoder(cfg, rngs=nnx.Rngs(0))))
    values = []
    with np.load(directory / "params.npz") as stored:
        for path, var in nnx.to_flat_state(state):
            key = "/".join(map(str, path))
            if key not in stored or stored[key].shape != var.get_value().shape:
                found = stored[key].shape if key in stored else "nothing"
                raise ValueError(
                    f"{directory / 'params.npz'}: {key} should be {var.get_value().shape}, found {found} "
                    f"(config: {directory / 'config.json'})"
                )
            values.append((path, var.replace(jnp.asarray(stored[key], var.get_value().dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(values))


def load_rows(path: str, cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """``delta`` codes, ``raw_actions`` and (with ``state_dim``) ``state`` per row; errors name the line."""
    codes, actions, states = [], [], []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
                c = [int(v) for v in row["delta"]]
                a = [float(v) for v in row["raw_actions"]]
                s = [float(v) for v in row["state"]] if cfg.state_dim else []
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{where}: needs 'delta' codes and 'raw_actions'"
                    + (" and 'state'" if cfg.state_dim else "")
                    + f" ({type(e).__name__}: {e})"
                ) from None
            if len(c) != cfg.num_codes or not all(0 <= v < cfg.codebook_size for v in c):
                raise ValueError(
                    f"{where}: 'delta' must be {cfg.num_codes} codes in [0, {cfg.codebook_size})"
                )
            if len(a) != ACTION_DIMS or not np.isfinite(a).all():
                raise ValueError(f"{where}: 'raw_actions' must be {ACTION_DIMS} finite numbers")
            if len(s) != cfg.state_dim:
                raise ValueError(f"{where}: 'state' has {len(s)} values, expected {cfg.state_dim}")
            codes.append(c)
            actions.append(a)
            states.append(s)
    if not codes:
        raise ValueError(f"{path}: no rows")
    return {
        "codes": np.asarray(codes, np.int32),
        "actions": np.asarray(actions, np.float32),
        "state": np.asarray(states, np.float32).reshape(len(codes), cfg.state_dim),
    }


def decoder_loss(model: ActionDecoder, batch: dict[str, jax.Array], rng: jax.Array):
    """MSE of the standardised deltas plus the gripper's binary cross entropy."""
    raw = model(batch["codes"], batch["state"] if batch["state"].shape[-1] else None)
    target = (batch["actions"][:, :-1] - model.mean[...]) / model.std[...]
    mse = jnp.mean((raw[:, :-1] - target) ** 2)
    closed = (batch["actions"][:, -1] >= 0.5).astype(jnp.float32)
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(raw[:, -1], closed))
    accuracy = jnp.mean((raw[:, -1] >= 0) == (closed > 0))
    return mse + bce, {"mse_standardised": mse, "gripper_bce": bce, "gripper_accuracy": accuracy}, None


def evaluate(model: ActionDecoder, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean absolute error per dimension in the data's units, and gripper accuracy."""
    state = jnp.asarray(data["state"]) if data["state"].shape[-1] else None
    predicted = np.asarray(model.predict(jnp.asarray(data["codes"]), state))
    error = np.abs(predicted - data["actions"])
    out = {f"mae_{d}": float(v) for d, v in enumerate(error[:, :-1].mean(axis=0))}
    out["mae"] = float(error[:, :-1].mean())
    out["gripper_accuracy"] = float((predicted[:, -1] == (data["actions"][:, -1] >= 0.5)).mean())
    return out


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
    run_dir = loop.prepare_run(config)
    mesh = make_mesh(config.mesh)
    train_data = load_rows(config.data.train, config.model)
    eval_data = load_rows(config.data.eval, config.model) if config.data.eval else None
    mean = train_data["actions"][:, :-1].mean(axis=0)
    std = train_data["actions"][:, :-1].std(axis=0) + 1e-6

    def factory(rngs: nnx.Rngs) -> ActionDecoder:
        model = ActionDecoder(config.model, rngs=rngs)
        model.mean[...], model.std[...] = jnp.asarray(mean), jnp.asarray(std)
        return model

    optimizer, schedule = build_optimizer(config)
    graphdef, state, shardings = create_train_state(factory, optimizer, mesh, config.seed)
    per_host = config.batch_size // jax.process_count()
    stream = BatchStream(
        len(train_data["codes"]),
        per_host,
        lambda rows, epoch, index: {k: v[rows] for k, v in train_data.items()},
        seed=config.seed,
    )
    checkpointer = loop.checkpointer_for(config, run_dir)
    state, start = loop.resume(checkpointer, state, stream)
    step = make_train_step(graphdef, decoder_loss, optimizer, schedule)
    compiled = compile_step(step, state, global_batch(stream.peek(), mesh), shardings, mesh)
    eval_fn = None
    if eval_data is not None:
        eval_fn = lambda state, _: evaluate(nnx.merge(graphdef, state["params"], state["rest"]), eval_data)  # noqa: E731
    logger = loop.logger_for(config, run_dir)
    settings = loop.settings_for(config, "action decoder", "examples")
    state, last = loop.run(settings, compiled, state, stream, mesh, checkpointer, logger, eval_fn, start)
    if jax.process_index() == 0:
        save_decoder(nnx.merge(graphdef, state["params"], state["rest"]), config.model, run_dir / "decoder")
        print(f"wrote {run_dir / 'decoder'} (for policy export --decoder)", flush=True)
    return last


def main() -> None:
    argv = [a for i, a in enumerate(sys.argv) if not (i == 1 and a == "train")]  # "train" is the only command
    loop.config_main(train, "latent_pretraining/configs/action_decoder.py", argv)


if __name__ == "__main__":
    main()
