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
from scipy.stats import binomtest

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
    return {name: task_rates(s["per_task"], s) for name, s in part["success"].items()}


def task_rates(per_task: dict[str, Any], overall: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """``{task, then 'overall': (rate, low, high)}``, as the success figure draws them."""
    return {task: (p["success_rate"], *p["ci95"]) for task, p in {**per_task, "overall": overall}.items()}


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
    """Held-out action MAE per moving dimension beside the training mean (and, for the median bins'
    MAE, the training median: the constant of least absolute error), token accuracy beside the
    majority token; all teacher-forced, as the trainer's evaluation scores them."""
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
    median_mae = np.abs(held_out - np.median(train, axis=0)).mean(axis=0)
    moving = [i for i in range(train.shape[1]) if train[:, i].std() > STILL]
    names = [ACTION_NAMES[i] if i < len(ACTION_NAMES) else str(i) for i in range(train.shape[1])]
    invalid = float(metrics.get("action_invalid_rate", 0.0))
    per_dim = {
        names[i]: {
            "mae": metrics.get(f"action_mae_{i}"),
            "mae_median_bins": metrics.get(f"action_mae_median_{i}"),
            "mean_baseline": float(mean_mae[i]),
            "median_baseline": float(median_mae[i]),
        }
        for i in moving
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
        if v["mae_median_bins"] is not None:
            verdicts.append(
                f"action MAE of {name} with median bins {v['mae_median_bins']:.4f} is "
                f"{compared(v['mae_median_bins'], v['mean_baseline'], 'lower', 'below')} the training "
                f"mean's {v['mean_baseline']:.4f} and "
                f"{compared(v['mae_median_bins'], v['median_baseline'], 'lower', 'below')} the training "
                f"median's {v['median_baseline']:.4f}"
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


def pooled_success(results_paths: Sequence[Path]) -> dict[str, Any]:
    """The ``policy`` entry of several evaluations (one per seed) pooled: successes over episodes,
    overall and per task, each with its Wilson 95% interval, and each seed's overall rate."""
    counts: dict[str, list[int]] = {}  # task or "overall" -> [successes, episodes]
    seeds = []
    for path in results_paths:
        policy = require(require(read_json(path), "policies", str(path)), "policy", str(path))
        parts = {**require(policy, "per_task", str(path)), "overall": require(policy, "overall", str(path))}
        for task, stats in parts.items():
            total = counts.setdefault(task, [0, 0])
            total[0] += int(require(stats, "successes", f"{path}: {task}"))
            total[1] += int(require(stats, "episodes", f"{path}: {task}"))
        seeds.append(parts["overall"]["success_rate"])
    pooled = {
        task: {"success_rate": k / n, "ci95": wilson(k, n), "successes": k, "episodes": n}
        for task, (k, n) in counts.items()
    }
    overall = pooled.pop("overall")
    return {"overall": overall, "per_task": pooled, "seed_rates": seeds}


def wilson(successes: int, trials: int) -> list[float]:
    """Wilson score 95% interval of a success rate (scipy)."""
    interval = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def arms_part(arms: Sequence[tuple[str, Path, Path]], moving: Sequence[str] | None = None) -> dict[str, Any]:
    """The experiment: each arm's closed-loop success pooled over its seeds and its held-out action
    MAE averaged over them (``arms`` holds ``(arm, finetune run, evaluation results.json)`` per seed),
    with the paper's two comparisons: latent against scratch (target +20 points) and latent
    against true-action pretraining (target within 10 points). ``moving``: the action dimensions whose
    MAE to keep (default every one the runs report)."""
    by_arm: dict[str, list[tuple[Path, Path]]] = {}
    for name, run, results in arms:
        by_arm.setdefault(name, []).append((run, results))
    part: dict[str, Any] = {"arms": {}}
    for name, seeds in by_arm.items():
        evals = [last_eval(run, "accuracy_action") for run, _ in seeds]
        dims = sorted(int(d) for k in evals[0] if (d := k.removeprefix("action_mae_")) != k and d.isdigit())
        names = [ACTION_NAMES[i] if i < len(ACTION_NAMES) else str(i) for i in dims]
        part["arms"][name] = {
            "seeds": len(seeds),
            "success": pooled_success([results for _, results in seeds]),
            "action_mae": {
                n: float(np.mean([e[f"action_mae_{i}"] for e in evals]))
                for n, i in zip(names, dims, strict=True)
                if moving is None or n in moving
            },
            "action_invalid_rate": float(np.mean([e.get("action_invalid_rate", 0.0) for e in evals])),
        }
    rates = {name: arm["success"]["overall"]["success_rate"] for name, arm in part["arms"].items()}
    verdicts = [
        f"arm {name}: closed-loop success {arm['success']['overall']['success_rate']:.2f} "
        f"[{arm['success']['overall']['ci95'][0]:.2f}, {arm['success']['overall']['ci95'][1]:.2f}] "
        f"over {arm['success']['overall']['episodes']} episodes ({arm['seeds']} seed(s))"
        for name, arm in part["arms"].items()
    ]
    if rates and max(rates.values()) == 0:
        verdicts.append("no arm succeeded in closed loop: these runs cannot tell the starting points apart")
    elif "latent" in rates and "scratch" in rates:
        gain = 100 * (rates["latent"] - rates["scratch"])
        verdicts.append(
            f"latent pretraining is {gain:+.0f} points over scratch: "
            + ("meets" if gain >= 20 else "does NOT meet")
            + " the paper's target of +20"
        )
    if max(rates.values(), default=0) > 0 and "latent" in rates and "actions" in rates:
        gap = 100 * (rates["actions"] - rates["latent"])
        verdicts.append(
            f"latent pretraining is {gap:.0f} points below true-action pretraining: "
            + ("within" if gap <= 10 else "NOT within")
            + " the paper's 10"
        )
    part["verdicts"] = verdicts
    return part


def labelled_data_part(points: Sequence[tuple[str, int, Path]]) -> dict[str, Any]:
    """Closed-loop success against the number of labelled trajectories, per arm (``points`` holds
    ``(arm, trajectories, evaluation results.json)``; one per seed, pooled)."""
    grouped: dict[str, dict[int, list[Path]]] = {}
    for name, count, results in points:
        grouped.setdefault(name, {}).setdefault(count, []).append(results)
    curve = {
        name: {str(count): pooled_success(paths)["overall"] for count, paths in sorted(by_count.items())}
        for name, by_count in grouped.items()
    }
    verdicts = [
        f"arm {name} with {count} labelled trajectories: success {s['success_rate']:.2f} "
        f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
        for name, by_count in curve.items()
        for count, s in by_count.items()
    ]
    return {"curve": curve, "verdicts": verdicts}


def rollout_pairs(
    results_path: Path, first: str = "policy", second: str = "expert"
) -> dict[str, dict[str, Path]]:
    """``{gif name: {title: path}}``: the rollouts that two policies of one evaluation recorded on the
    same episode, titled with the policy and whether it succeeded."""
    folder = Path(results_path).parent
    titled: dict[str, dict[str, Path]] = {}
    for policy in (first, second):
        summary = folder / policy / "summary.json"
        if not summary.exists():
            return {}
        for episode in require(read_json(summary), "episodes", str(summary)):
            if "video" in episode:
                outcome = "success" if episode["success"] else "failed"
                titled.setdefault(episode["video"], {})[f"{policy} ({outcome})"] = (
                    folder / policy / episode["video"]
                )
    return {name: pair for name, pair in titled.items() if len(pair) == 2}


def rate_cells(stats: dict[str, Any]) -> str:
    """Two table cells: a success rate and its 95% interval."""
    low, high = stats["ci95"]
    return f"{stats['success_rate']:.2f} | [{low:.2f}, {high:.2f}]"


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
        lines += [
            "",
            "| action dimension | MAE | training-mean MAE | MAE, median bins | training-median MAE |",
            "|---|---|---|---|---|",
        ]
        for name, v in results["action"]["mae_per_moving_dimension"].items():
            mae, median = ("none" if x is None else f"{x:.4f}" for x in (v["mae"], v["mae_median_bins"]))
            lines.append(
                f"| {name} | {mae} | {v['mean_baseline']:.4f} | {median} | {v['median_baseline']:.4f} |"
            )
    if "closed_loop" in results:
        lines += ["", "| policy | success | 95% interval | episodes |", "|---|---|---|---|"]
        for name, s in results["closed_loop"]["success"].items():
            lines.append(f"| {name} | {rate_cells(s)} | {s['episodes']} |")
    if "arms" in results:
        lines += [
            "",
            "| arm | seeds | success | 95% interval | episodes | per seed | held-out action MAE |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, arm in results["arms"]["arms"].items():
            s = arm["success"]["overall"]
            seeds = ", ".join(f"{r:.2f}" for r in arm["success"]["seed_rates"])
            mae = ", ".join(f"{n} {v:.4f}" for n, v in arm["action_mae"].items())
            lines.append(f"| {name} | {arm['seeds']} | {rate_cells(s)} | {s['episodes']} | {seeds} | {mae} |")
    if "labelled_data" in results:
        lines += ["", "| arm | labelled trajectories | success | 95% interval |", "|---|---|---|---|"]
        for name, by_count in results["labelled_data"]["curve"].items():
            lines += [f"| {name} | {count} | {rate_cells(s)} |" for count, s in by_count.items()]
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
    p.add_argument("--lam_reconstructions", type=Path, help="the LAM run's reconstructions.npz (a figure)")
    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="ARM,RUN_DIR,RESULTS",
        help="one seed of an experiment arm (scratch, latent, actions): its finetune run and evaluation",
    )
    p.add_argument(
        "--labelled",
        action="append",
        default=[],
        metavar="ARM,TRAJECTORIES,RESULTS",
        help="one point of the labelled-data curve: the arm, its labelled trajectories, its evaluation",
    )
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
    arms, points = [a.split(",") for a in args.arm], [a.split(",") for a in args.labelled]
    if any(len(a) != 3 or not all(a) for a in arms + points):
        p.error(
            "--arm takes ARM,RUN_DIR,RESULTS and --labelled ARM,TRAJECTORIES,RESULTS, "
            f"got {args.arm + args.labelled}"
        )
    if any(not count.isdigit() for _, count, _ in points):
        p.error(f"--labelled takes a whole number of trajectories, got {args.labelled}")
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
        if arms:
            moving = list(results["action"]["mae_per_moving_dimension"]) if "action" in results else None
            results["arms"] = arms_part([(name, Path(run), Path(res)) for name, run, res in arms], moving)
        if points:
            results["labelled_data"] = labelled_data_part(
                [(name, int(n), Path(res)) for name, n, res in points]
            )
        if not results:
            p.error(
                "name at least one part (--lam_quality, --latent_run, --finetune_run, --closed_loop, --arm, "
                "--labelled)"
            )
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

        if args.lam_reconstructions:
            with np.load(args.lam_reconstructions) as pairs:
                shown = {k: pairs[k] for k in ("current", "future", "reconstruction")}
            plots["lam_reconstructions.png"] = lambda path: figures.lam_reconstructions(**shown, path=path)
        if args.closed_loop:
            for gif, pair in rollout_pairs(args.closed_loop).items():
                plots[f"side_by_side_{gif}"] = lambda path, pair=pair: figures.rollouts_side_by_side(
                    pair, path
                )
        if arms:
            arm_rates = {
                name: task_rates(arm["success"]["per_task"], arm["success"]["overall"])
                for name, arm in results["arms"]["arms"].items()
            }
            plots["arms.png"] = lambda path: figures.success(arm_rates, path)
        if points:
            curve = {
                name: {int(n): (s["success_rate"], *s["ci95"]) for n, s in by_count.items()}
                for name, by_count in results["labelled_data"]["curve"].items()
            }
            plots["labelled_data.png"] = lambda path: figures.labelled_data(curve, path)

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
