"""Latent action model quality on the tabletop world: our quantizer vs LAPA's NSVQ.

    python benchmarks/bench_lam_quality.py [--steps 1500] [--episodes 150] [--runs vq_ema,nsvq_lapa]
        [--refit] [--model code_head=lapa --model motion_kernel=0]   # the last two: LAPA's heads

Trains the ``small`` preset on one tabletop export (written under ``--out``) per configuration (same
data, seed and schedule; only the quantizer differs). The expert's actions get heavy noise
(``--noise 1.0``): with a near-deterministic expert the next frame is predictable from x_t
alone and a model can ignore its codes and scores held-out episodes with
hard codes: PSNR gain over copying x_t, action sensitivity, codebook usage per position
(minimum over positions) and joint, and probes of the true (dx, dy) from the codes
(linear / MLP R^2, mutual information against a shuffled baseline). ``nsvq_lapa`` is LAPA's
quantizer as LAPA runs it: NSVQ, its replacement schedule (steps 1..4501) and replacement
by exact copies (noise 1e-12). ``--refit`` adds a row per run scored after ``lam.refit`` (the
codebook refit by k-means on the model's action vectors). Prints a table and one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from report import add_model_argument, override_model, print_report, tabletop_export

from lam.configs.lam import get_config
from lam.refit import FIT_PAIRS, refit
from lam.train import quality_summary, train

RUNS = {
    "vq_ema": ("small,vq_ema", {}),
    "fsq": ("small,fsq", {}),
    "nsvq": ("small,nsvq", {}),  # dead codes replaced by the batch's vectors (the default)
    "nsvq_codes": ("small,nsvq", {"replace_from": "codes"}),  # by used codes plus 1% noise
    "nsvq_lapa": ("small,nsvq", {"replace_from": "codes", "replace_noise": 1e-12}),
}


def run(name: str, args: argparse.Namespace) -> list[dict]:
    preset, quantizer_options = RUNS[name]
    config = get_config(preset)
    override_model(config.model, args.model)
    config.total_steps, config.eval_every, config.save_every = args.steps, args.eval_every, args.steps
    config.optimizer.learning_rate = args.lr
    config.data.source = "tabletop"
    config.data.path = str(tabletop_export(args.out, args.episodes, config.model.image_size, 0, args.noise))
    run_dir = Path(args.out) / name
    config.run_dir = str(run_dir)
    for key, value in quantizer_options.items():
        config.model.quantizer_options[key] = value
    began = time.perf_counter()
    last = train(config)
    timing = {"steps": args.steps, "minutes": round((time.perf_counter() - began) / 60, 1),
              "pairs_per_s": round(last["pairs_per_s"], 1)}  # fmt: skip
    rows = [{"run": name, **timing, **quality_summary(json.loads((run_dir / "quality.json").read_text()))}]
    if args.refit:
        _, refitted = refit(run_dir, run_dir / "export_refit", pairs=args.refit_pairs)
        del refitted["codebook"]
        rows.append({"run": f"{name}+refit", **timing, **refitted})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--episodes", type=int, default=150)
    p.add_argument("--noise", type=float, default=1.0, help="expert action noise")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--runs", default="nsvq,nsvq_lapa")
    p.add_argument(
        "--eval_every", type=int, default=0, help="also evaluate every N steps (quality_<step>.json)"
    )
    p.add_argument("--refit", action="store_true", help="also score each run after lam.refit (own row)")
    p.add_argument("--refit_pairs", type=int, default=FIT_PAIRS, help="training pairs that fit the refit")
    add_model_argument(p)
    p.add_argument("--out", default="runs/bench_lam_quality")
    args = p.parse_args()
    if args.refit_pairs < 1:
        p.error(f"--refit_pairs must be at least 1, got {args.refit_pairs}")
    results = [row for name in args.runs.split(",") for row in run(name, args)]
    cols = ("run", "psnr_gain", "action_sensitivity", "min_position_usage", "joint_distinct",
            "probe_linear_r2", "probe_mlp_r2", "pairs_per_s")  # fmt: skip
    print_report(results, cols)


if __name__ == "__main__":
    main()
