"""Every learned number of a pipeline run beside its trivial baseline: ``results.json`` and ``report.md``.

    python -m latent_pretraining.report --out demo_out/results \\
        --lam_quality demo_out/lam/quality.json \\
        --latent_run demo_out/vla_latent --latent_train demo_out/latent_train.jsonl \\
        --latent_eval demo_out/latent_eval.jsonl \\
        --finetune_run demo_out/vla_finetune --finetune_train demo_out/finetune_train.jsonl \\
        --finetune_eval demo_out/finetune_eval.jsonl \\
        --closed_loop demo_out/eval_policy/results.json

Each part is optional. The baselines use only the training rows:
- the LAM: probe R^2 of the true motion from the codes (a mean predictor scores 0), code use per
  position (all codes: 1.0), the reconstruction's PSNR beside copying the current frame;
- latent pretraining: held-out latent-code accuracy beside predicting each position's most common
  training code;
- finetuning: held-out action MAE per moving dimension beside predicting the training mean, and
  action-token accuracy beside each dimension's most common training token;
- closed loop: the policy's success with its 95% interval beside the random and no-op policies.
A number that does not beat its baseline is said to in ``verdicts``; the command exits 0 either way.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.files import write_together

ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
STILL = 1e-9  # a dimension whose training values spread less than this does not move


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a bad line is a ValueError naming the file and line."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {number}: not JSON ({e.msg})") from None
    return rows


def field(row: dict[str, Any], name: str, path: Path, number: int) -> Any:
    if name not in row:
        raise ValueError(f"{path}, row {number}: no {name!r} field")
    return row[name]


def last_eval(run: Path, key: str) -> dict[str, float]:
    """The newest record of ``run/metrics.jsonl`` that holds ``eval/<key>``, without the prefix."""
    path = run / "metrics.jsonl"
    records = [r for r in read_jsonl(path) if f"eval/{key}" in r]
    if not records:
        raise ValueError(f"{path}: no evaluation record with eval/{key}; was the run evaluated?")
    return {k.removeprefix("eval/"): v for k, v in records[-1].items() if k.startswith("eval/")}


def majority_accuracy(train: list[list[Any]], held_out: list[list[Any]]) -> float:
    """Accuracy on ``held_out`` of predicting each position's most common ``train`` value."""
    width = len(train[0])
    majority = [Counter(row[i] for row in train).most_common(1)[0][0] for i in range(width)]
    hits = [row[i] == majority[i] for row in held_out for i in range(width)]
    return float(np.mean(hits))


def lam_part(quality_path: Path) -> dict[str, Any]:
    quality = json.loads(quality_path.read_text())
    probe, codebook = quality["probe"], quality["codebook"]
    r2 = probe["linear_r2"]
    return {
        "probe_r2": r2,
        "probe_r2_baseline": 0.0,
        "probe_test_pairs": probe["n_test"],
        "code_usage_per_position": codebook["position_usage"],
        "code_usage_baseline": 1.0,
        "psnr_recon": quality["psnr_recon"],
        "psnr_copy_baseline": quality["psnr_copy"],
        "verdicts": [
            *(
                f"LAM probe R^2 of {name} is {value:.3f}: "
                + ("above" if value > 0 else "NOT above")
                + " the mean predictor's 0"
                for name, value in r2.items()
            ),
            f"LAM code use per position {codebook['position_usage']}: "
            + ("every code" if codebook["min_position_usage"] >= 1.0 else "NOT every code")
            + " at every position",
        ],
    }


def latent_part(run: Path, train_path: Path, eval_path: Path) -> dict[str, Any]:
    metrics = last_eval(run, "accuracy_latent")
    codes = {
        path: [field(row, "delta", path, i) for i, row in enumerate(read_jsonl(path), 1)]
        for path in (train_path, eval_path)
    }
    baseline = majority_accuracy(codes[train_path], codes[eval_path])
    accuracy = float(metrics["accuracy_latent"])
    return {
        "accuracy": accuracy,
        "majority_baseline": baseline,
        "held_out_rows": len(codes[eval_path]),
        "verdicts": [
            f"latent-code accuracy {accuracy:.3f} is "
            + ("above" if accuracy > baseline else "NOT above")
            + f" the per-position majority code's {baseline:.3f}"
        ],
    }


def action_part(run: Path, train_path: Path, eval_path: Path) -> dict[str, Any]:
    metrics = last_eval(run, "accuracy_action")
    raw, tokens = {}, {}
    for path in (train_path, eval_path):
        rows = read_jsonl(path)
        raw[path] = np.array([field(r, "raw_actions", path, i) for i, r in enumerate(rows, 1)], np.float64)
        tokens[path] = [field(r, "action", path, i) for i, r in enumerate(rows, 1)]
    train, held_out = raw[train_path], raw[eval_path]
    mean_mae = np.abs(held_out - train.mean(axis=0)).mean(axis=0)
    moving = [i for i in range(train.shape[1]) if train[:, i].std() > STILL]
    names = [ACTION_NAMES[i] if i < len(ACTION_NAMES) else str(i) for i in range(train.shape[1])]
    # no MAE when no held-out prediction decodes to an action (every one has an id outside its bins)
    per_dim = {
        names[i]: {"mae": metrics.get(f"action_mae_{i}"), "mean_baseline": float(mean_mae[i])} for i in moving
    }
    accuracy = float(metrics["accuracy_action"])
    token_baseline = majority_accuracy(tokens[train_path], tokens[eval_path])
    verdicts = [
        f"action MAE of {name} {_number(v['mae'], 4)} is "
        + ("below" if v["mae"] is not None and v["mae"] < v["mean_baseline"] else "NOT below")
        + f" the training mean's {v['mean_baseline']:.4f}"
        for name, v in per_dim.items()
    ]
    verdicts.append(
        f"action-token accuracy {accuracy:.3f} is "
        + ("above" if accuracy > token_baseline else "NOT above")
        + f" the per-dimension majority token's {token_baseline:.3f}"
    )
    return {
        "mae_per_moving_dimension": per_dim,
        "token_accuracy": accuracy,
        "token_majority_baseline": token_baseline,
        "invalid_rate": metrics.get("action_invalid_rate"),
        "held_out_rows": len(held_out),
        "verdicts": verdicts,
    }


def _number(value: float | None, digits: int) -> str:
    return "none (no held-out prediction decodes to an action)" if value is None else f"{value:.{digits}f}"


def closed_loop_part(results_path: Path) -> dict[str, Any]:
    results = json.loads(results_path.read_text())
    overall = {name: p["overall"] for name, p in results["policies"].items()}
    if "policy" not in overall:
        raise ValueError(f"{results_path}: no 'policy' among {sorted(overall)}")
    trivial = {name: overall[name]["success_rate"] for name in ("random", "noop") if name in overall}
    rate = overall["policy"]["success_rate"]
    low, high = overall["policy"]["ci95"]
    verdicts = [
        f"closed-loop success {rate:.2f} [{low:.2f}, {high:.2f}] is "
        + ("above" if rate > value else "NOT above")
        + f" the {name} policy's {value:.2f}"
        for name, value in trivial.items()
    ]
    return {
        "success": {
            name: {k: o[k] for k in ("success_rate", "ci95", "episodes")} for name, o in overall.items()
        },
        "verdicts": verdicts,
    }


def markdown(results: dict[str, Any]) -> str:
    """``report.md``: the verdicts first, then each part's numbers."""
    lines = ["# Results", "", "Every learned number beside its trivial baseline (see results.json).", ""]
    lines += [f"- {v}" for part in results.values() for v in part["verdicts"]]
    if "closed_loop" in results:
        lines += ["", "| policy | success | 95% interval | episodes |", "|---|---|---|---|"]
        for name, s in results["closed_loop"]["success"].items():
            low, high = s["ci95"]
            lines.append(f"| {name} | {s['success_rate']:.2f} | [{low:.2f}, {high:.2f}] | {s['episodes']} |")
    if "action" in results:
        lines += ["", "| dimension | MAE | training-mean MAE |", "|---|---|---|"]
        for name, v in results["action"]["mae_per_moving_dimension"].items():
            mae = "none" if v["mae"] is None else f"{v['mae']:.4f}"
            lines.append(f"| {name} | {mae} | {v['mean_baseline']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and report.md")
    p.add_argument("--lam_quality", type=Path, help="the LAM run's quality.json")
    for part in ("latent", "finetune"):
        p.add_argument(f"--{part}_run", type=Path, help=f"the {part} VLA run directory (its metrics.jsonl)")
        p.add_argument(f"--{part}_train", type=Path, help="its training rows (JSONL)")
        p.add_argument(f"--{part}_eval", type=Path, help="its held-out rows (JSONL)")
    p.add_argument("--closed_loop", type=Path, help="latent_pretraining.evaluate's results.json")
    args = p.parse_args(argv)
    for part in ("latent", "finetune"):
        given = [getattr(args, f"{part}_{k}") is not None for k in ("run", "train", "eval")]
        if any(given) and not all(given):
            p.error(f"--{part}_run, --{part}_train and --{part}_eval go together")
    with exit_on():
        results = {}
        if args.lam_quality:
            results["lam"] = lam_part(args.lam_quality)
        if args.latent_run:
            results["latent"] = latent_part(args.latent_run, args.latent_train, args.latent_eval)
        if args.finetune_run:
            results["action"] = action_part(args.finetune_run, args.finetune_train, args.finetune_eval)
        if args.closed_loop:
            results["closed_loop"] = closed_loop_part(args.closed_loop)
        if not results:
            p.error("name at least one part (--lam_quality, --latent_run, --finetune_run, --closed_loop)")
        args.out.mkdir(parents=True, exist_ok=True)
        write_together(
            [
                (
                    args.out / "results.json",
                    lambda path: path.write_text(json.dumps(results, indent=2) + "\n"),
                ),
                (args.out / "report.md", lambda path: path.write_text(markdown(results))),
            ]
        )
    for part in results.values():
        for verdict in part["verdicts"]:
            print(verdict)
    print(f"results: {args.out / 'results.json'}, report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
