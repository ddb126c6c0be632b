"""Trains the latent action model on frame pairs, on the shared training infrastructure.

    python -m lam.train --config=lam/configs/lam.py:small[,vq_ema|fsq] --config.run_dir=runs/lam \\
        --config.data.path=DIR [--config.data.source=folder --config.data.offset=1]

Loss: mean squared error of the predicted future frame (LAPA's) plus the quantizer's own
loss (VQ commitment). After each optimizer step the quantizer maintains its codebook on the
global batch (``lam.quantizers``). Evaluation uses hard codes on pairs from held-out
episodes: PSNR and its gain over copying x_t, action sensitivity (PSNR with the pair's own
codes minus with another pair's), codebook usage and perplexity per position and joint, and
when the source has actions, linear/MLP probe R^2 and mutual information between codes and
the true action (``eval.probe_dims``). Each evaluation writes ``quality_<step>.json`` and
PNG grids; the end of training writes ``quality.json`` and the export ``<run_dir>/export``
(``lam.checkpoint``, with the data settings ``lam.label`` reuses). A rerun with the same run_dir
resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lam import metrics
from lam.checkpoint import data_settings, save_lam
from lam.data import PairBatches, drop_static, frame_pairs, pair_stream, select_pairs, split_episodes
from lam.model import LatentActionModel
from lam.visualize import (
    RECONSTRUCTIONS_FILE,
    save_reconstruction_arrays,
    save_reconstruction_grid,
    save_same_code_grid,
)
from latent_pretraining.core import loop
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
from latent_pretraining.episodes import Episode, check_source, open_episodes


def batch_code_stats(codes: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Mean over positions of the fraction of codes used and of the perplexity, in this batch."""
    onehot = jax.nn.one_hot(codes, size, dtype=jnp.float32)  # [B, L, K]
    freq = onehot.mean(0)
    entropy = -jnp.sum(jnp.where(freq > 0, freq * jnp.log(jnp.maximum(freq, 1e-12)), 0.0), axis=-1)
    return jnp.mean(jnp.mean(freq > 0, axis=-1)), jnp.mean(jnp.exp(entropy))


def loss_for(config: ml_collections.ConfigDict):
    """Reconstruction MSE of x_{t+H} plus the quantizer's loss, and this batch's code statistics."""
    size = config.model.codebook_size

    def loss_fn(model: LatentActionModel, batch: dict[str, jax.Array], rng: jax.Array):
        out = model(batch["frames"], train=True, rng=rng)
        rec = jnp.mean(jnp.square(out["recon"].astype(jnp.float32) - out["target"]))
        usage, perplexity = batch_code_stats(out["codes"], size)
        scores = {
            "rec_mse": rec,
            "psnr": metrics.psnr(rec),
            "batch_code_usage": usage,
            "batch_perplexity": perplexity,
        }
        return rec + out["aux_loss"], scores, (out["z"], out["codes"])

    return loss_fn


def codebook_upkeep(model: LatentActionModel, carry, step: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    """The quantizer's dead-code restarts / EMA updates, after each optimizer update."""
    z, codes = carry
    return model.quantizer.maintain(z, codes, step, rng)


class Evaluator:
    """Quality of the current model on held-out pairs (hard codes); see the module docstring."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        episodes: list[Episode],
        holdout_pairs: np.ndarray,
        probe_pairs: np.ndarray,
        mesh,
        config: ml_collections.ConfigDict,
        run_dir: Path,
    ):
        self.graphdef, self.mesh, self.config, self.run_dir = graphdef, mesh, config, run_dir
        self.last_report: dict | None = None
        self.chunk = max(mesh.size, (config.batch_size // mesh.size) * mesh.size)
        batches = PairBatches(episodes)
        holdout = batches.make_batch(holdout_pairs, config.model.image_size)
        probe = batches.make_batch(probe_pairs, config.model.image_size)
        self.holdout, self.probe_frames = holdout["frames"], probe["frames"]
        self.holdout_actions, self.probe_actions = holdout.get("actions"), probe.get("actions")
        self.swap = jnp.asarray(np.roll(np.arange(self.chunk), 1))  # each row decoded with another's codes

        @jax.jit
        def codes_and_recons(params, rest, frames, swap):
            model = nnx.merge(graphdef, params, rest)
            out = model(frames)  # hard codes; the target as the model is trained on it
            swapped = model.reconstruct(frames, out["codes"][swap])
            return out["codes"], out["recon"], swapped, out["target"]

        @jax.jit
        def codes_only(params, rest, frames):
            return nnx.merge(graphdef, params, rest).codes(frames)

        @jax.jit
        def decode(params, rest, frames, codes):
            return nnx.merge(graphdef, params, rest).reconstruct(frames, codes)

        self._codes_and_recons, self._codes_only, self._decode = codes_and_recons, codes_only, decode

    def _chunks(self, frames: np.ndarray):
        """Equal-size sharded chunks (the last one padded); yields (array, valid rows)."""
        for start in range(0, len(frames), self.chunk):
            part = frames[start : start + self.chunk]
            valid = len(part)
            if valid < self.chunk:
                part = np.concatenate([part, np.repeat(part[-1:], self.chunk - valid, axis=0)])
            yield jax.device_put(part, batch_sharding(self.mesh, part.ndim, part.shape)), valid

    def __call__(self, state: TrainState, step: int) -> dict[str, float]:
        return _scalars(self.evaluate(state, step))

    def evaluate(self, state: TrainState, step: int, out_dir: Path | None = None) -> dict:
        """The full report (also written with the grids to ``out_dir``, default the run directory)."""
        params, rest = state["params"], state["rest"]
        parts: list[tuple[np.ndarray, ...]] = []
        with jax.set_mesh(self.mesh):
            for frames, valid in self._chunks(self.holdout):
                outputs = jax.device_get(self._codes_and_recons(params, rest, frames, self.swap))
                parts.append(tuple(x[:valid] for x in outputs))
            probe_codes = [
                jax.device_get(self._codes_only(params, rest, f))[:v]
                for f, v in self._chunks(self.probe_frames)
            ]
        codes, own, swapped, target = (np.concatenate(column) for column in zip(*parts, strict=True))
        report = metrics.copy_baseline_gain(own, self.holdout[:, 0], target)
        report["action_sensitivity"] = metrics.action_sensitivity(
            metrics.psnr(metrics.per_image_mse(own, target)),
            metrics.psnr(metrics.per_image_mse(swapped, target)),
        )
        report["codebook"] = metrics.codebook_stats(codes, self.config.model.codebook_size)
        model = nnx.merge(self.graphdef, params, rest)
        report["restarts_total"] = int(jax.device_get(model.quantizer.restarts_total[...]))
        if self.holdout_actions is not None:
            report["probe"] = self._probe(np.concatenate(probe_codes), codes)
        if jax.process_index() == 0:
            self._save(report, codes, own, target, step, params, rest, out_dir or self.run_dir)
        self.last_report = report  # the export's score, after the final evaluation
        return report

    def _probe(self, probe_codes: np.ndarray, holdout_codes: np.ndarray) -> dict:
        all_codes = np.concatenate([probe_codes, holdout_codes])
        actions = np.concatenate([self.probe_actions, self.holdout_actions])
        train_mask = np.arange(len(all_codes)) < len(probe_codes)
        return metrics.probe_report(
            all_codes,
            actions,
            train_mask,
            self.config.model.codebook_size,
            dims=tuple(self.config.eval.probe_dims),
        )

    def _save(
        self,
        report: dict,
        codes: np.ndarray,
        own: np.ndarray,
        target: np.ndarray,
        step: int,
        params,
        rest,
        out_dir: Path,
    ) -> None:
        text = json.dumps(report, indent=2)
        (out_dir / f"quality_{step:07d}.json").write_text(text)
        (out_dir / "quality.json").write_text(text)
        rows = min(8, len(own))
        save_reconstruction_grid(
            self.holdout[:rows, 0], target[:rows], own[:rows], out_dir / f"recon_{step:07d}.png"
        )
        save_reconstruction_arrays(
            self.holdout[:rows, 0], target[:rows], own[:rows], out_dir / RECONSTRUCTIONS_FILE
        )
        tuples, counts = np.unique(codes, axis=0, return_counts=True)
        chosen = tuples[np.argsort(-counts)[:6]]  # the most frequent code tuples ...
        firsts = self.holdout[:rows]  # ... applied to the same starting frames
        with jax.set_mesh(self.mesh):
            recons = [
                np.concatenate(
                    [
                        jax.device_get(self._decode(params, rest, f, self._tile(c, f)))[:v]
                        for f, v in self._chunks(firsts)
                    ]
                )
                for c in chosen
            ]
        save_same_code_grid(firsts[:, 0], np.stack(recons), out_dir / f"same_code_{step:07d}.png")

    def _tile(self, code: np.ndarray, frames: jax.Array) -> jax.Array:
        tiled = np.tile(code[None], (frames.shape[0], 1)).astype(np.int32)
        return jax.device_put(tiled, batch_sharding(self.mesh, 2, tiled.shape))


def quality_summary(report: dict) -> dict:
    """The headline numbers of an evaluation report (``quality.json``), rounded for printing."""
    out = {k: round(report[k], 3) for k in ("psnr_recon", "psnr_copy", "psnr_gain", "action_sensitivity")}
    book = report["codebook"]
    out.update(
        min_position_usage=book["min_position_usage"],
        joint_distinct=book["joint_distinct"],
        joint_perplexity=round(book["joint_perplexity"], 1),
        restarts_total=report["restarts_total"],
    )
    if "probe" in report:
        probe = report["probe"]
        out.update(
            probe_linear_r2={k: round(v, 3) for k, v in probe["linear_r2"].items()},
            probe_mlp_r2={k: round(v, 3) for k, v in probe["mlp_r2"].items()},
            mi_bits={k: round(v, 2) for k, v in probe["mi_bits"].items()},
            mi_shuffled_bits={k: round(v, 2) for k, v in probe["mi_shuffled_bits"].items()},
        )
    return out


def _scalars(report: dict) -> dict[str, float]:
    """The report's headline numbers for the metrics log."""
    out = {k: float(report[k]) for k in ("psnr_recon", "psnr_copy", "psnr_gain", "action_sensitivity")}
    book = report["codebook"]
    out.update(
        code_usage=book["mean_usage"],
        min_position_usage=book["min_position_usage"],
        perplexity=book["mean_perplexity"],
        joint_usage=book["joint_usage"],
        joint_perplexity=book["joint_perplexity"],
        restarts_total=float(report["restarts_total"]),
    )
    if "probe" in report:
        out.update(
            probe_linear_r2=report["probe"]["linear_r2_mean"], probe_mlp_r2=report["probe"]["mlp_r2_mean"]
        )
    return out


def load_pairs(config: ml_collections.ConfigDict) -> tuple[list[Episode], np.ndarray, np.ndarray]:
    """Episodes, training pairs and held-out pairs (split by episode)."""
    data = config.data
    check_source(data.source, data.path, "--config.data.path")
    options: dict = {}
    if data.source == "rlds":
        options = dict(image_key=data.image_key)
    elif data.source == "jsonl" and data.image_root:
        options = dict(image_root=data.image_root)
    episodes = open_episodes(data.source, data.path, **options)
    if len(episodes) < 2:
        raise ValueError(
            f"{data.source} source {data.path!r} has {len(episodes)} episode(s); need 2+ to hold one out"
        )
    pairs = frame_pairs(episodes, data.offset, data.offset_seconds or None)
    if data.drop_static > 0:
        pairs, dropped = drop_static(episodes, pairs, data.drop_static)
        print(f"dropped {dropped} static pairs (mean |difference| < {data.drop_static})", flush=True)
    train_eps, holdout_eps = split_episodes(len(episodes), data.holdout_fraction, config.seed)
    train, holdout = select_pairs(pairs, train_eps), select_pairs(pairs, holdout_eps)
    if len(train) == 0 or len(holdout) == 0:
        raise ValueError(f"{len(train)} training and {len(holdout)} held-out pairs: need both")
    print(
        f"{len(episodes)} episodes: {len(train)} training pairs, {len(holdout)} held-out pairs "
        f"({len(holdout_eps)} episodes)",
        flush=True,
    )
    return episodes, train, holdout


def sample_rows(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows drawn without replacement (all when fewer), kept in their order."""
    return rows[np.sort(rng.permutation(len(rows))[:count])]


def evaluation_pairs(
    config: ml_collections.ConfigDict, train_pairs: np.ndarray, holdout_pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out pairs scored (``eval.max_pairs``) and the training pairs that fit the probes
    (``eval.probe_train_pairs``), drawn with the run's seed."""
    rng = np.random.default_rng(config.seed)
    holdout = sample_rows(holdout_pairs, config.eval.max_pairs, rng)
    return holdout, sample_rows(train_pairs, config.eval.probe_train_pairs, rng)


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
    run_dir = loop.prepare_run(config)
    mesh = make_mesh(config.mesh)
    episodes, train_pairs, holdout_pairs = load_pairs(config)
    data = pair_stream(episodes, train_pairs, config.batch_size, config.model.image_size, config.seed)
    optimizer, schedule = build_optimizer(config)
    graphdef, state, shardings = create_train_state(
        lambda rngs: LatentActionModel(config.model, rngs), optimizer, mesh, config.seed
    )
    checkpointer = loop.checkpointer_for(config, run_dir)
    state, start = loop.resume(checkpointer, state, data)
    logger = loop.logger_for(config, run_dir)
    example = global_batch(data.peek(), mesh)
    step = make_train_step(graphdef, loss_for(config), optimizer, schedule, codebook_upkeep)
    step_fn = compile_step(step, state, example, shardings, mesh)
    holdout, probe = evaluation_pairs(config, train_pairs, holdout_pairs)
    evaluator = Evaluator(graphdef, episodes, holdout, probe, mesh, config, run_dir)
    settings = loop.settings_for(config, "lam", "pairs")
    state, last = loop.run(settings, step_fn, state, data, mesh, checkpointer, logger, evaluator, start)
    if jax.process_index() == 0:
        model = nnx.merge(graphdef, state["params"], state["rest"])
        save_lam(model, run_dir / "export", data_settings(config), evaluator.last_report)
        print(f"exported {run_dir / 'export'}", flush=True)
    return last


def main(argv: list[str] | None = None) -> None:
    loop.config_main(train, "lam/configs/lam.py:small", argv)


if __name__ == "__main__":
    main()
