"""Latent-to-action decoder error on held-out tabletop episodes, beside the discretisation floor.

    python benchmarks/bench_action_decoder.py --lam runs/bench_lam_quality/vq_ema [--episodes 200]

Writes tabletop episodes (``data.make_tabletop``, into a temporary folder), labels every step
(t, t+1) with the LAM's codes, trains ``latent_pretraining.actions.decoder`` on the codes of 80%
of the episodes and scores the rest: MAE per action dimension and gripper accuracy. Beside it,
two references on the same held-out steps: the error of decoding ground-truth action bins
(LAPA's 256 quantile bins fitted on the training steps; the floor set by discretisation) and
of predicting the training mean (what codes that carry no information would give). Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from report import print_report, tabletop_export

from lam.checkpoint import load_lam
from lam.data import PairBatches, frame_pairs, split_episodes
from lam.label import CodeLabeler
from latent_pretraining.actions.bins import ActionBins
from latent_pretraining.actions.decoder import train as train_decoder
from latent_pretraining.actions.spec import ACTION_NAMES, DELTA_DIMS
from latent_pretraining.configs.action_decoder import get_config
from latent_pretraining.episodes import open_episodes

DIMS = ACTION_NAMES[:DELTA_DIMS]


def labelled_steps(
    lam_path: str, episodes: int, seed: int, noise: float, tmp: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [N, L], actions [N, 7], episode index [N]) for every step of every episode of a
    tabletop export written under ``tmp`` at the LAM's image size."""
    model = load_lam(lam_path)
    export = tabletop_export(tmp, episodes, model.cfg.image_size, seed, noise)
    eps = open_episodes("tabletop", str(export))
    pairs = frame_pairs(eps, 1, tail="drop")
    labeler, batches = CodeLabeler(model, 256), PairBatches(eps)
    codes = np.concatenate(
        [
            labeler(batches.make_batch(pairs[s : s + 256], model.cfg.image_size)["frames"])
            for s in range(0, len(pairs), 256)
        ]
    )
    actions = np.stack([eps[int(i)].actions[int(t)] for i, t, _ in pairs])
    return codes, actions, pairs[:, 0]


def write_rows(path: Path, codes: np.ndarray, actions: np.ndarray) -> None:
    with open(path, "w") as f:
        for c, a in zip(codes, actions, strict=True):
            f.write(json.dumps({"delta": [int(x) for x in c], "raw_actions": [float(x) for x in a]}) + "\n")


def mae_row(name: str, predicted: np.ndarray, actual: np.ndarray) -> dict:
    err = np.abs(predicted[:, :6] - actual[:, :6]).mean(axis=0)
    row = {"method": name, **{d: round(float(e), 4) for d, e in zip(DIMS, err, strict=True)}}
    row["gripper_accuracy"] = round(float(((predicted[:, 6] >= 0.5) == (actual[:, 6] >= 0.5)).mean()), 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lam", required=True, help="LAM export or run directory")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--noise", type=float, default=1.0, help="expert action noise (as the LAM was trained)")
    p.add_argument("--seed", type=int, default=1000, help="episodes unseen by the LAM's training (seed 0..)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        codes, actions, episode = labelled_steps(args.lam, args.episodes, args.seed, args.noise, Path(tmp))
        train_eps, test_eps = split_episodes(args.episodes, 0.2, 0)
        train, test = np.isin(episode, train_eps), np.isin(episode, test_eps)
        write_rows(Path(tmp) / "train.jsonl", codes[train], actions[train])
        write_rows(Path(tmp) / "test.jsonl", codes[test], actions[test])
        config = get_config()
        config.data.train, config.data.eval = f"{tmp}/train.jsonl", f"{tmp}/test.jsonl"
        config.total_steps, config.eval_every, config.run_dir = args.steps, 0, f"{tmp}/decoder"
        last = train_decoder(config)
    row = {"method": "latent codes -> decoder"}
    row.update({d: round(last[f"eval_mae_{k}"], 4) for k, d in enumerate(DIMS)})
    row["gripper_accuracy"] = round(last["eval_gripper_accuracy"], 3)
    rows.append(row)
    bins = ActionBins.fit(actions[train], 256)
    rows.append(
        mae_row("ground-truth bins (floor)", bins.decode(bins.encode(actions[test])[0]), actions[test])
    )
    mean = np.tile(actions[train].mean(axis=0), (int(test.sum()), 1))
    rows.append(mae_row("training mean (no information)", mean, actions[test]))
    print(f"{int(train.sum())} training steps, {int(test.sum())} held-out steps ({len(test_eps)} episodes)")
    cols = ("method", *DIMS, "gripper_accuracy")
    print_report(rows, cols)


if __name__ == "__main__":
    main()
