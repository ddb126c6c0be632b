"""Closed-loop evaluation of a policy bundle in the tabletop world, beside its baselines.

    python -m latent_pretraining.evaluate --policy demo_out/quick/policy --episodes 10 --out runs/eval
    python -m latent_pretraining.evaluate --server http://127.0.0.1:32820 --episodes 10 --out runs/eval

The policy runs in-process (``--policy``) or behind ``python -m latent_pretraining.deploy``
(``--server``, OpenVLA's REST convention). The same episode seeds then score the scripted expert,
a random and a no-op policy. ``--out`` gets one directory per policy (``summary.json`` and GIF
rollouts) and ``results.json``: success per task and overall with Wilson 95% intervals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from latent_pretraining.core.cli import INPUT_ERRORS, exit_on
from latent_pretraining.core.compile_cache import enable_compilation_cache
from latent_pretraining.deploy.client import ServerError, ServerPolicy, wait_until_ready
from latent_pretraining.policy.cli import add_policy_arguments, policy_from_arguments
from latent_pretraining.policy.policy import Policy
from sim.env import EnvConfig, TabletopEnv
from sim.evaluate import ExpertPolicy, NoOpPolicy, RandomPolicy, evaluate, parse_tasks
from sim.tasks import TASK_KINDS

BASELINES = ("expert", "random", "noop")


class BundlePolicy:
    """A ``Policy`` in the evaluator's interface: ``step`` gives the raw 7-D action."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def reset(self, instruction: str) -> None:
        self.policy.reset(instruction)

    def step(self, image: np.ndarray) -> np.ndarray:
        return self.policy.step(image)["action"]


def run_all(
    policies: dict[str, Any],
    env: TabletopEnv,
    episodes: int,
    tasks: tuple[str, ...],
    seed: int,
    out: Path | None,
    videos: int,
) -> dict[str, Any]:
    """Every policy on the same episode seeds; the per-policy summaries and one comparison table."""
    results: dict[str, Any] = {"episodes_per_task": episodes, "tasks": list(tasks), "seed": seed}
    results["policies"] = {}
    for name, policy in policies.items():
        summary = evaluate(policy, env, episodes, tasks, seed, None if out is None else out / name, videos)
        results["policies"][name] = {
            "overall": summary["overall"],
            "per_task": summary["per_task"],
            "seconds": summary["seconds"],
        }
    if out is not None:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def format_results(results: dict[str, Any]) -> str:
    """Success per policy and task, each with its 95% interval."""
    tasks = results["tasks"]
    lines = [f"{'policy':<10}" + "".join(f"{t:>22}" for t in [*tasks, "overall"])]
    for name, scores in results["policies"].items():
        cells = [scores["per_task"][t] for t in tasks] + [scores["overall"]]
        lines.append(f"{name:<10}" + "".join(f"{_rate(c):>22}" for c in cells))
    return "\n".join(lines)


def _rate(stats: dict[str, Any]) -> str:
    lo, hi = stats["ci95"]
    return f"{stats['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latent_pretraining.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_policy_arguments(parser)
    parser.add_argument("--server", default=None, help="a policy server's URL, instead of --policy")
    parser.add_argument("--wait_s", type=float, default=0.0, help="wait this long for the server to be ready")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task kind")
    parser.add_argument("--tasks", default=",".join(TASK_KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64, help="the world's camera resolution")
    parser.add_argument("--max_steps", type=int, default=EnvConfig.max_steps, help="steps per episode")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated; '' for none")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--videos", type=int, default=3, help="GIF rollouts per policy")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    tasks = parse_tasks(parser, args.tasks)
    baselines = [b for b in args.baselines.split(",") if b]
    if set(baselines) - set(BASELINES):
        parser.error(f"--baselines {args.baselines!r}: choose from {','.join(BASELINES)}")
    env = TabletopEnv(EnvConfig(image_size=args.image_size, max_steps=args.max_steps))
    baseline_policies = {
        "expert": lambda: ExpertPolicy(env, 0.0, args.seed),
        "random": lambda: RandomPolicy(args.seed),
        "noop": NoOpPolicy,
    }
    with exit_on(*INPUT_ERRORS, ServerError):  # a server that fails mid-run ends it with its message
        if args.server:
            if args.policy or args.load_checkpoint:
                raise ValueError("give --server or a policy (--policy / LAPA's flags), not both")
            wait_until_ready(args.server, args.wait_s)
            policies: dict[str, Any] = {"policy": ServerPolicy(args.server)}
        else:
            enable_compilation_cache()
            policies = {"policy": BundlePolicy(policy_from_arguments(args))}
        policies.update({name: baseline_policies[name]() for name in baselines})
        results = run_all(policies, env, args.episodes, tasks, args.seed, args.out, args.videos)
    print(format_results(results))
    if args.out is not None:
        print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
