"""Does a trained LAM's codebook lose what its action vectors know? Its codes vs a k-means refit.

    python benchmarks/bench_lam_codebook_refit.py --lam RUN_DIR_OR_EXPORT --out DIR
        [--episodes 150] [--noise 1.0] [--fit_pairs 4096] [--iterations 50]

Scores a trained LAM on the held-out tabletop pairs exactly as training does (``lam.train.Evaluator``:
gain over copying, action sensitivity, codebook usage, probes of the true (dx, dy)), then again with
its codebook replaced by k-means centroids of its own action vectors on training pairs (Lloyd's
algorithm started from the codebook; a code left without vectors keeps its place). The encoder and
decoder are unchanged. Pass the ``--episodes`` and ``--noise`` the model was trained with
(``bench_lam_quality.py``'s defaults are these defaults) and the held-out pairs are the run's.
Also reports each codebook's distortion (mean squared distance of the fit vectors to their code).
Writes each evaluation's quality files and grids under ``DIR/codebook`` and ``DIR/refit``; prints a
table and one JSON line per codebook.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from report import print_report
from tqdm import tqdm

from lam.checkpoint import load_lam
from lam.configs.lam import get_config
from lam.data import PairBatches
from lam.model import LatentActionModel
from lam.quantizers import nearest
from lam.train import Evaluator, evaluation_pairs, load_pairs
from latent_pretraining.sharding import make_mesh

CHUNK = 128  # pairs encoded per call


def action_vectors(model: LatentActionModel, batches: PairBatches, pairs: np.ndarray) -> np.ndarray:
    """The model's action vectors (before quantization) of ``pairs``: [N * L, D] float32."""
    encode = jax.jit(lambda frames: model.encode_pair(frames)[2])
    size = model.cfg.image_size
    parts = [
        np.asarray(encode(batches.make_batch(pairs[i : i + CHUNK], size)["frames"]))
        for i in tqdm(range(0, len(pairs), CHUNK), desc="action vectors", leave=False)
    ]
    vectors = np.concatenate(parts)
    return vectors.reshape(-1, vectors.shape[-1]).astype(np.float32)


def kmeans(vectors: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd's algorithm from ``centroids``; a centroid that gets no vectors stays where it is."""
    centroids = centroids.astype(np.float32).copy()
    for _ in range(iterations):
        labels = np.asarray(nearest(vectors, centroids))
        for k in range(len(centroids)):
            members = vectors[labels == k]
            if len(members):
                centroids[k] = members.mean(0)
    return centroids


def distortion(vectors: np.ndarray, centroids: np.ndarray) -> float:
    """Mean squared distance of each vector to its nearest centroid (k-means' objective)."""
    gaps = vectors - centroids[np.asarray(nearest(vectors, centroids))]
    return float(np.mean(np.sum(np.square(gaps), axis=-1)))


def score(model: LatentActionModel, evaluator: Evaluator, run_dir: Path) -> dict:
    """The evaluator's held-out report of ``model`` (as written to ``run_dir/quality.json``), in brief."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    evaluator({"params": params, "rest": rest}, 0)
    quality = json.loads((run_dir / "quality.json").read_text())
    probe = quality.get("probe", {})
    return {
        "psnr_gain": round(quality["psnr_gain"], 2),
        "action_sensitivity": round(quality["action_sensitivity"], 2),
        "min_position_usage": quality["codebook"]["min_position_usage"],
        "joint_distinct": quality["codebook"]["joint_distinct"],
        "probe_linear_r2": {k: round(v, 3) for k, v in probe.get("linear_r2", {}).items()},
        "probe_mlp_r2": {k: round(v, 3) for k, v in probe.get("mlp_r2", {}).items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lam", required=True, help="a LAM export or training run directory")
    p.add_argument("--out", required=True, help="directory for the two evaluations' files")
    p.add_argument("--episodes", type=int, default=150)
    p.add_argument("--noise", type=float, default=1.0, help="expert action noise")
    p.add_argument("--fit_pairs", type=int, default=4096, help="training pairs whose vectors fit k-means")
    p.add_argument("--iterations", type=int, default=50)
    args = p.parse_args()

    model = load_lam(args.lam)
    if not hasattr(model.quantizer, "codebook"):
        raise SystemExit(f"{args.lam}: its quantizer ({model.cfg.quantizer}) has no codebook to refit")
    config = get_config("small")
    config.model = model.cfg
    config.data.episodes, config.data.noise = args.episodes, args.noise
    episodes, train_pairs, holdout_pairs = load_pairs(config)
    holdout, probe = evaluation_pairs(config, train_pairs, holdout_pairs)
    mesh = make_mesh(config.mesh)
    graphdef = nnx.split(model)[0]
    rng = np.random.default_rng(config.seed)
    fit = train_pairs[np.sort(rng.permutation(len(train_pairs))[: args.fit_pairs])]
    vectors = action_vectors(model, PairBatches(episodes), fit)
    book = model.quantizer.codebook
    rows = []
    for name in ("codebook", "refit"):
        if name == "refit":
            book.set_value(jnp.asarray(kmeans(vectors, np.asarray(book[...]), args.iterations), book.dtype))
        run_dir = Path(args.out) / name
        run_dir.mkdir(parents=True, exist_ok=True)
        evaluator = Evaluator(graphdef, episodes, holdout, probe, mesh, config, run_dir)
        row = {"codebook": name, "fit_distortion": round(distortion(vectors, np.asarray(book[...])), 4)}
        rows.append({**row, **score(model, evaluator, run_dir)})
    print_report(rows, ("codebook", "fit_distortion", "psnr_gain", "action_sensitivity", "min_position_usage",
                        "joint_distinct", "probe_linear_r2", "probe_mlp_r2"))  # fmt: skip


if __name__ == "__main__":
    main()
