"""Every learned number of a pipeline run beside its trivial baseline: ``results.json`` and ``report.md``.

    python -m latent_pretraining.report --out demo_out/quick/results \\
        --lam_quality demo_out/quick/lam/quality.json \\
        --latent_run demo_out/quick/vla_latent --latent_train demo_out/quick/latent_train.jsonl \\
        --latent_eval demo_out/quick/latent_eval.jsonl \\
        --finetune_run demo_out/quick/vla_finetune --finetune_train demo_out/quick/finetune_train.jsonl \\
        --finetune_eval demo_out/quick/finetune_eval.jsonl \\
        --closed_loop demo_out/quick/eval_policy/results.json \
        --curves lam=demo_out/quick/lam --curves finetune=demo_out/quick/vla_finetune

Each part is optional. The baselines use only the training rows:
- the LAM: probe R^2 of the true motion from the codes (a mean predictor scores 0), the
  reconstruction's PSNR beside copying the current frame, and code use per position (the target:
  every code);
- latent pretraining: held-out latent-code accuracy beside predicting each position's most common
  training code;
- finetuning: held-out action MAE per moving dimension beside predicting the training mean, and
  action-token accuracy beside each dimension's most common training token;
- closed loop: the policy's success with its 95% interval beside the random and no-op policies
  (above only when the interval's lower end clears their rate).
The VLA's held-out numbers are teacher-forced, as the trainer's evaluation scores them. Figures
(``figures/``): the training loss of each ``--curves`` run, the LAM's code use per position, and
closed-loop success per policy and task with 95% intervals.
A number that does not beat its baseline is said to in ``verdicts``; the command exits 0 either way.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_pretraining import figures
from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.files import write_together
from latent_pretraining.core.jsonl import read_jsonl_objects

ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
STILL = 1e-9  # a dimension whose training values spread less than this does not move


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None


def require(mapping: dict[str, Any], key: str, where: str) -> Any:
    """``mapping[key]``, or a ValueError naming where the field was expected."""
    if key not in mapping:
        raise ValueError(f"{where}: no {key!r} field")
    return mapping[key]


def columns(path: Path, *names: str) -> list[list[list[Any]]]:
    """Fields ``names`` (each a list of the same length in every row) of each row of a JSONL
    file, read in one pass: one list of values per name."""
    values: list[list[list[Any]]] = [[] for _ in names]
    for number, row in read_jsonl_objects(path):
        for name, found in zip(names, values, strict=True):
            value = require(row, name, f"{path}:{number}")
            width = len(found[0]) if found else None
            if not isinstance(value, list) or (width is not None and len(value) != width):
                raise ValueError(
                    f"{path}:{number}: field {name!r} must be a list of {width or 'N'} values, got {value!r}"
                )
            found.append(value)
    if not values[0]:
        raise ValueError(f"{path}: no rows")
    return values


def last_eval(run: Path, key: str) -> dict[str, float]:
    """The newest record of ``run/metrics.jsonl`` that holds ``eval/<key>``, without the prefix."""
    path = run / "metrics.jsonl"
    records = [r for _, r in read_jsonl_objects(path) if f"eval/{key}" in r]
    if not records:
        raise ValueError(f"{path}: no evaluation record with eval/{key}; was the run evaluated?")
    return {k.removeprefix("eval/"): v for k, v in records[-1].items() if k.startswith("eval/")}


def training_curve(run: Path) -> tuple[list[int], list[float]]:
    """(steps, training losses) of a run's ``metrics.jsonl``."""
    path = run / "metrics.jsonl"
    points = [(r["step"], r["train/loss"]) for _, r in read_jsonl_objects(path) if "train/loss" in r]
    if not points:
        raise ValueError(f"{path}: no train/loss records")
    return [s for s, _ in points], [v for _, v in points]


def closed_loop_rates(part: dict[str, Any]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """``{policy: {task or 'overall': (rate, low, high)}}`` of ``closed_loop_part``'s result."""
    return {
        name: {task: (p["success_rate"], *p["ci95"]) for task, p in {**s["per_task"], "overall": s}.items()}
        for name, s in part["success"].items()
    }


def majority_accuracy(train: list[list[Any]], held_out: list[list[Any]]) -> float:
    """Accuracy on ``held_out`` of predicting each position's most common ``train`` value."""
    width = len(train[0])
    majority = [Counter(row[i] for row in train).most_common(1)[0][0] for i in range(width)]
    hits = [row[i] == majority[i] for row in held_out for i in range(width)]
    return float(np.mean(hits))


def compared(value: float, baseline: float, better: str, word: str = "above") -> str:
    """``word`` or ``NOT <word>``: whether ``value`` beats ``baseline`` in the ``better`` direction."""
    beats = value > baseline if better == "higher" else value < baseline
    return word if beats else f"NOT {word}"


def lam_part(quality_path: Path) -> dict[str, Any]:
    """The LAM's held-out quality (``lam.train``'s quality.json) beside a mean predictor and copying x_t."""
    quality = read_json(quality_path)
    where = str(quality_path)
    probe = require(quality, "probe", f"{where} (written only when the LAM's episodes carry actions)")
    r2 = require(probe, "linear_r2", where)
    usage = require(require(quality, "codebook", where), "position_usage", where)
    psnr, copy = require(quality, "psnr_recon", where), require(quality, "psnr_copy", where)
    verdicts = [
        f"LAM probe R^2 of {n} is {v:.3f}: {compared(v, 0.0, 'higher')} a mean predictor's 0"
        for n, v in r2.items()
    ]
    verdicts.append(
        f"LAM reconstruction PSNR {psnr:.2f} dB is {compared(psnr, copy, 'higher')} "
        f"copying x_t's {copy:.2f} dB"
    )
    verdicts.append(
        f"LAM code use per position {usage}: "
        + ("every code at every position" if min(usage) >= 1.0 else "NOT every code at every position")
    )
    return {
        "probe_r2": r2,
        "probe_r2_mean_predictor": 0.0,
        "probe_test_pairs": probe.get("n_test"),
        "code_usage_per_position": usage,
        "psnr_recon": psnr,
        "psnr_copy_baseline": copy,
        "verdicts": verdicts,
    }


def latent_part(run: Path, train_path: Path, eval_path: Path) -> dict[str, Any]:
    """Held-out latent-code accuracy (teacher-forced) beside each position's most common training code."""
    accuracy = float(last_eval(run, "accuracy_latent")["accuracy_latent"])
    [held_out], [train] = columns(eval_path, "delta"), columns(train_path, "delta")
    baseline = majority_accuracy(train, held_out)
    return {
        "accuracy": accuracy,
        "majority_baseline": baseline,
        "held_out_rows": len(held_out),
        "verdicts": [
            f"latent-code accuracy {accuracy:.3f} (teacher-forced) is "
            f"{compared(accuracy, baseline, 'higher')} the per-position majority code's {baseline:.3f}"
        ],
    }


def action_part(run: Path, train_path: Path, eval_path: Path) -> dict[str, Any]:
    """Held-out action MAE per moving dimension beside the training mean, token accuracy beside the
    majority token; both teacher-forced, as the trainer's evaluation scores them."""
    metrics = last_eval(run, "accuracy_action")
    (train_raw, train_tokens), (held_raw, held_tokens) = (
        columns(p, "raw_actions", "action") for p in (train_path, eval_path)
    )
    train, held_out = np.array(train_raw, np.float64), np.array(held_raw, np.float64)
    if train.shape[1] != held_out.shape[1]:
        raise ValueError(
            f"{eval_path}: {held_out.shape[1]} action dimensions, {train_path} has {train.shape[1]}"
        )
    mean_mae = np.abs(held_out - train.mean(axis=0)).mean(axis=0)
    moving = [i for i in range(train.shape[1]) if train[:, i].std() > STILL]
    names = [ACTION_NAMES[i] if i < len(ACTION_NAMES) else str(i) for i in range(train.shape[1])]
    invalid = float(metrics.get("action_invalid_rate", 0.0))
    per_dim = {
        names[i]: {"mae": metrics.get(f"action_mae_{i}"), "mean_baseline": float(mean_mae[i])} for i in moving
    }
    verdicts = []
    for name, v in per_dim.items():
        if v["mae"] is None or invalid > 0:  # the MAE leaves out the rows whose prediction is no action
            shown = "none" if v["mae"] is None else f"{v['mae']:.4f}"
            verdicts.append(
                f"action MAE of {name} {shown} is NOT comparable with the training mean's "
                f"{v['mean_baseline']:.4f}: {invalid:.0%} of held-out predictions decode to no action"
            )
        else:
            verdicts.append(
                f"action MAE of {name} {v['mae']:.4f} (teacher-forced) is "
                f"{compared(v['mae'], v['mean_baseline'], 'lower', 'below')} "
                f"the training mean's {v['mean_baseline']:.4f}"
            )
    accuracy = float(metrics["accuracy_action"])
    token_baseline = majority_accuracy(train_tokens, held_tokens)
    verdicts.append(
        f"action-token accuracy {accuracy:.3f} (teacher-forced) is "
        f"{compared(accuracy, token_baseline, 'higher')} "
        f"the per-dimension majority token's {token_baseline:.3f}"
    )
    return {
        "mae_per_moving_dimension": per_dim,
        "token_accuracy": accuracy,
        "token_majority_baseline": token_baseline,
        "invalid_rate": invalid,
        "held_out_rows": len(held_out),
        "verdicts": verdicts,
    }


def closed_loop_part(results_path: Path) -> dict[str, Any]:
    """The policy's closed-loop success beside the random and no-op policies': above only when its
    95% interval's lower end clears theirs, else within noise."""
    results = read_json(results_path)
    policies = require(results, "policies", str(results_path))
    overall = {
        name: require(p, "overall", f"{results_path}: policy {name!r}") for name, p in policies.items()
    }
    per_task = {
        name: require(p, "per_task", f"{results_path}: policy {name!r}") for name, p in policies.items()
    }
    fields = ("success_rate", "ci95", "episodes")
    if "policy" not in overall:
        raise ValueError(f"{results_path}: no 'policy' among {sorted(overall)}")
    rate = overall["policy"]["success_rate"]
    low, high = overall["policy"]["ci95"]
    verdicts = []
    for name in ("random", "noop"):
        if name in overall:
            value = overall[name]["success_rate"]
            if low > value:
                word = "above"
            elif rate > value:
                word = "NOT clearly above (within its interval)"
            else:
                word = "NOT above"
            verdicts.append(
                f"closed-loop success {rate:.2f} [{low:.2f}, {high:.2f}] is {word} "
                f"the {name} policy's {value:.2f}"
            )
    return {
        "success": {
            name: {
                **{k: o[k] for k in fields},
                "per_task": {task: {k: t[k] for k in fields} for task, t in per_task[name].items()},
            }
            for name, o in overall.items()
        },
        "verdicts": verdicts,
    }


def markdown(results: dict[str, Any], figure_files: Sequence[str] = ()) -> str:
    """``report.md``: the verdicts first, then each part's numbers, then the figures."""
    lines = ["# Results", "", "Every learned number beside its trivial baseline (see results.json).", ""]
    lines += [f"- {v}" for part in results.values() for v in part["verdicts"]]
    if "lam" in results:
        lam = results["lam"]
        lines += ["", "| LAM | value | baseline |", "|---|---|---|"]
        lines += [f"| probe R^2 of {n} | {v:.3f} | 0 (mean predictor) |" for n, v in lam["probe_r2"].items()]
        lines.append(
            f"| reconstruction PSNR | {lam['psnr_recon']:.2f} dB "
            f"| {lam['psnr_copy_baseline']:.2f} dB (copy x_t) |"
        )
        lines.append(f"| code use per position | {lam['code_usage_per_position']} | 1.0 each (every code) |")
    if "latent" in results:
        latent = results["latent"]
        lines += ["", "| latent codes | accuracy | majority code |", "|---|---|---|"]
        lines.append(
            f"| held-out, {latent['held_out_rows']} rows | {latent['accuracy']:.3f} "
            f"| {latent['majority_baseline']:.3f} |"
        )
    if "action" in results:
        lines += ["", "| action dimension | MAE | training-mean MAE |", "|---|---|---|"]
        for name, v in results["action"]["mae_per_moving_dimension"].items():
            mae = "none" if v["mae"] is None else f"{v['mae']:.4f}"
            lines.append(f"| {name} | {mae} | {v['mean_baseline']:.4f} |")
    if "closed_loop" in results:
        lines += ["", "| policy | success | 95% interval | episodes |", "|---|---|---|---|"]
        for name, s in results["closed_loop"]["success"].items():
            low, high = s["ci95"]
            lines.append(f"| {name} | {s['success_rate']:.2f} | [{low:.2f}, {high:.2f}] | {s['episodes']} |")
    for name in figure_files:
        lines += ["", f"![{name}](figures/{name})"]
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
    p.add_argument(
        "--curves",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a run whose training loss to plot",
    )
    args = p.parse_args(argv)
    curves = dict(c.partition("=")[::2] for c in args.curves)
    if any(not name or not run for name, run in curves.items()):
        p.error(f"--curves takes NAME=RUN_DIR, got {args.curves}")
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
        plots = {}  # figure file -> how to draw it
        if curves:
            drawn = {name: training_curve(Path(run)) for name, run in curves.items()}
            plots["training_curves.png"] = lambda path: figures.training_curves(drawn, path)
        if "lam" in results:
            plots["code_usage.png"] = lambda path: figures.code_usage(
                results["lam"]["code_usage_per_position"], path
            )
        if args.closed_loop:
            rates = closed_loop_rates(results["closed_loop"])
            plots["closed_loop.png"] = lambda path: figures.success(rates, path)

        def draw(folder: Path) -> None:
            folder.mkdir()
            for name, plot in plots.items():
                plot(folder / name)

        args.out.mkdir(parents=True, exist_ok=True)
        write_together(
            [
                (
                    args.out / "results.json",
                    lambda path: path.write_text(json.dumps(results, indent=2) + "\n"),
                ),
                (args.out / "report.md", lambda path: path.write_text(markdown(results, list(plots)))),
                (args.out / "figures", draw),
            ]
        )
    for part in results.values():
        for verdict in part["verdicts"]:
            print(verdict)
    print(f"results: {args.out / 'results.json'}, report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
