"""Refits a trained LAM's codebook by k-means on its own action vectors.

    python -m lam.refit --run runs/lam [--pairs 16384] [--restarts 16] [--iterations 50]
        [--out runs/lam/export_refit]

NSVQ (LAPA's quantizer) learns its codebook through the norm of its noise, so the codes can end
up far from the action vectors (measured in BENCHMARKS.md, "Where the time goes", finding 5).
This keeps the encoder and the decoder and refits the codebook: Lloyd's algorithm (a code that
gets no vectors stays put) from the trained codebook and from ``--restarts`` k-means++ seedings,
keeping the fit of least distortion. When a seeding wins, the codes' numbers are new (code 3 of
the refit need not be code 3 of the trained model), so labels from the two exports do not line up.

Both codebooks are scored on the run's held-out pairs as training scores them (``lam.train.Evaluator``;
``<run>/refit/codebook`` and ``<run>/refit/refit``), with one JSON line each (and the distortion:
the mean squared distance of the fit vectors to their code). The trained codebook's score is the
one its export carries (training's final evaluation, ``lam_quality.json``; then ``refit/codebook``
holds only ``quality.json``), scored afresh only for an export without it. The refit model is
written atomically as an export (default ``<run>/export_refit``, with the run's data settings and
its score) for ``lam.label``.
Data, seed and evaluation settings come from the run's ``config.json``. One process (vectors
encoded on its devices, k-means on its host); for ``nsvq`` and ``vq_ema`` (FSQ has no codebook).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from lam.checkpoint import data_settings, load_lam, load_quality, save_lam
from lam.data import PairBatches
from lam.model import LatentActionModel
from lam.quantizers import nearest
from lam.train import Evaluator, evaluation_pairs, load_pairs, quality_summary, sample_rows
from latent_pretraining.core.sharding import make_mesh

CHUNK = 128  # pairs encoded per call
FIT_PAIRS = 16384  # training pairs whose action vectors fit k-means (at most)
RESTARTS = 16  # k-means++ seedings tried besides the trained codebook
ITERATIONS = 50  # Lloyd iterations per start


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
    """Lloyd's algorithm from ``centroids`` for at most ``iterations`` steps (it stops early when no
    vector changes its centroid); a centroid that gets no vectors stays where it is."""
    centroids = centroids.astype(np.float32).copy()
    previous = None
    for _ in range(iterations):
        labels = np.asarray(nearest(vectors, centroids))
        if previous is not None and np.array_equal(labels, previous):
            break
        previous = labels
        for k in range(len(centroids)):
            members = vectors[labels == k]
            if len(members):
                centroids[k] = members.mean(0)
    return centroids


def kmeans_plus_plus(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding of ``count`` >= 1 centroids: the first is a uniformly drawn vector, each next
    one a vector drawn with probability proportional to its squared distance from the nearest
    centroid chosen so far (uniformly when every vector sits on a chosen centroid)."""
    centroids = [vectors[rng.integers(len(vectors))]]
    gaps = np.sum(np.square(vectors - centroids[0]), axis=-1)
    for _ in range(count - 1):
        total = gaps.sum()
        pick = vectors[rng.choice(len(vectors), p=gaps / total if total > 0 else None)]
        centroids.append(pick)
        gaps = np.minimum(gaps, np.sum(np.square(vectors - pick), axis=-1))
    return np.stack(centroids).astype(np.float32)


def best_kmeans(
    vectors: np.ndarray, start: np.ndarray, restarts: int, iterations: int, rng: np.random.Generator
) -> np.ndarray:
    """Lloyd's from ``start`` and from ``restarts`` k-means++ seedings; the fit of least distortion
    (``start``'s on a tie)."""
    starts = [start] + [kmeans_plus_plus(vectors, len(start), rng) for _ in range(restarts)]
    fits = [kmeans(vectors, s, iterations) for s in tqdm(starts, desc="k-means starts", leave=False)]
    return min(fits, key=lambda centroids: distortion(vectors, centroids))


def distortion(vectors: np.ndarray, centroids: np.ndarray) -> float:
    """Mean squared distance of each vector to its nearest centroid (k-means' objective)."""
    gaps = vectors - centroids[np.asarray(nearest(vectors, centroids))]
    return float(np.mean(np.sum(np.square(gaps), axis=-1)))


def refit(
    run: Path,
    out: Path,
    pairs: int = FIT_PAIRS,
    restarts: int = RESTARTS,
    iterations: int = ITERATIONS,
    data_path: str = "",
) -> list[dict]:
    """Refits the run's export, scores both codebooks (a row each: ``codebook``, ``fit_distortion``
    and :func:`lam.train.quality_summary`) and writes the refit export to ``out``. The run's own
    data is read again, from ``data_path`` when given (it moved, or the run's config has none)."""
    if pairs < 1 or restarts < 0 or iterations < 1:
        raise ValueError(
            f"need pairs >= 1, restarts >= 0, iterations >= 1; got {pairs}, {restarts}, {iterations}"
        )
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run}: no config.json (expected a lam.train run directory)")
    config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    model = load_lam(run)
    if not hasattr(model.quantizer, "codebook"):
        raise ValueError(f"{run}: its quantizer ({model.cfg.quantizer}) has no codebook to refit")
    config.model = model.cfg
    config.data.path = data_path or config.data.path
    episodes, train_pairs, holdout_pairs = load_pairs(config)
    holdout, probe = evaluation_pairs(config, train_pairs, holdout_pairs)
    rng = np.random.default_rng(config.seed)
    fit = sample_rows(train_pairs, pairs, rng)
    vectors = action_vectors(model, PairBatches(episodes), fit)
    evaluator = Evaluator(nnx.graphdef(model), episodes, holdout, probe, make_mesh(config.mesh), config, run)
    trained = load_quality(run)  # the score training gave these weights, when the export has it
    rows = []
    for name in ("codebook", "refit"):
        if name == "refit":
            book = model.quantizer.codebook
            fitted = best_kmeans(vectors, np.asarray(book[...]), restarts, iterations, rng)
            book.set_value(jnp.asarray(fitted, book.dtype))
        out_dir = run / "refit" / name
        out_dir.mkdir(parents=True, exist_ok=True)
        if name == "codebook" and trained is not None:
            report = trained
            (out_dir / "quality.json").write_text(json.dumps(report, indent=2))
        else:
            _, params, rest = nnx.split(model, nnx.Param, ...)
            report = evaluator.evaluate({"params": params, "rest": rest}, 0, out_dir)
        codebook = np.asarray(model.quantizer.codebook[...])
        row = {"codebook": name, "fit_distortion": round(distortion(vectors, codebook), 4)}
        rows.append({**row, **quality_summary(report)})
    save_lam(model, out, data_settings(config), report)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a lam.train run directory (config.json and export/)")
    p.add_argument("--pairs", type=int, default=FIT_PAIRS, help="training pairs whose vectors fit k-means")
    p.add_argument(
        "--restarts", type=int, default=RESTARTS, help="k-means++ seedings besides the trained codebook"
    )
    p.add_argument("--iterations", type=int, default=ITERATIONS, help="Lloyd iterations per start")
    p.add_argument("--out", default="", help="the refit export (default: <run>/export_refit)")
    p.add_argument("--data_path", default="", help="the run's data, if not at its config's data.path")
    args = p.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "export_refit"
    for row in refit(run, out, args.pairs, args.restarts, args.iterations, args.data_path):
        print(json.dumps(row))
    print(f"exported {out}", flush=True)


if __name__ == "__main__":
    main()
