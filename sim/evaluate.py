"""Closed-loop evaluation of image-conditioned policies in the tabletop world.

A policy follows SIMPLER's interface: ``reset(instruction)`` at the start of an
episode, then ``step(image) -> 7-D action`` (numpy) each step. ``evaluate`` runs
K episodes per task kind with fixed seeds and reports success per task and
overall (with Wilson 95% intervals), episode lengths, a summary JSON and a few
rollouts as GIFs.

    python -m sim.evaluate --policy expert|random|noop --episodes 20 --out runs/eval
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from sim.env import EnvConfig, TabletopEnv
from sim.expert import ScriptedExpert
from sim.tasks import TASK_KINDS
from sim.world import ACTION_DIM, MAX_ROTATION, MAX_TRANSLATION

EVAL_SEED_OFFSET = 1_000_000  # evaluation seeds never collide with dataset seeds (0, 1, 2, ...)


class Policy(Protocol):
    def reset(self, instruction: str) -> None: ...

    def step(self, image: np.ndarray) -> np.ndarray: ...


class ExpertPolicy:
    """The scripted expert (upper bound). Privileged: it reads the env's true state."""

    def __init__(self, env: TabletopEnv, noise: float = 0.0, seed: int = 0):
        self.env, self.noise, self.seed = env, noise, seed
        self._expert: ScriptedExpert | None = None

    def reset(self, instruction: str) -> None:
        rng = np.random.default_rng(self.seed)
        self._expert = ScriptedExpert(self.env.task, noise=self.noise, rng=rng)

    def step(self, image: np.ndarray) -> np.ndarray:
        return self._expert.act(self.env.state)


class RandomPolicy:
    """Uniform actions within the limits, gripper open/closed at random (lower bound)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def reset(self, instruction: str) -> None:
        pass

    def step(self, image: np.ndarray) -> np.ndarray:
        limits = np.array([MAX_TRANSLATION] * 3 + [MAX_ROTATION] * 3)
        return np.concatenate([self.rng.uniform(-limits, limits), [float(self.rng.integers(2))]])


class NoOpPolicy:
    """Does nothing (lower bound)."""

    def reset(self, instruction: str) -> None:
        pass

    def step(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(ACTION_DIM)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 10, scale: int = 2) -> None:
    images = [
        Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames
    ]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def _stats(results: list[dict]) -> dict:
    n = len(results)
    wins = sum(r["success"] for r in results)
    lo, hi = wilson_interval(wins, n)
    return {
        "episodes": n,
        "successes": wins,
        "success_rate": wins / n if n else 0.0,
        "ci95": [lo, hi],
        "mean_length": float(np.mean([r["length"] for r in results])) if n else 0.0,
    }


def evaluate(
    policy: Policy,
    env: TabletopEnv,
    episodes_per_task: int = 10,
    tasks: tuple[str, ...] = TASK_KINDS,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    num_videos: int = 3,
) -> dict:
    """Runs ``episodes_per_task`` episodes of every task kind; returns (and writes) the summary."""
    if episodes_per_task < 1 or not tasks:
        raise ValueError(f"need at least one episode of one task, got {episodes_per_task} x {list(tasks)}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    videos_left = num_videos
    start = time.perf_counter()
    with tqdm(total=episodes_per_task * len(tasks), desc="evaluate", unit="ep") as bar:
        for task in tasks:
            for k in range(episodes_per_task):
                episode_seed = EVAL_SEED_OFFSET + seed * 10_000 + k
                image = env.reset(episode_seed, task)
                policy.reset(env.instruction)
                frames = [image]
                done, info = False, {"success": False, "steps": 0}
                while not done:
                    image, _, done, info = env.step(policy.step(image))
                    frames.append(image)
                result = {
                    "task": task,
                    "seed": episode_seed,
                    "instruction": env.instruction,
                    "success": bool(info["success"]),
                    "length": int(info["steps"]),
                }
                if out is not None and videos_left > 0 and k == 0:
                    gif = out / f"rollout_{task}_{episode_seed}.gif"
                    save_gif(frames, gif)
                    result["video"] = gif.name
                    videos_left -= 1
                results.append(result)
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.2f}")
    summary = {
        "policy": type(policy).__name__,
        "overall": _stats(results),
        "per_task": {t: _stats([r for r in results if r["task"] == t]) for t in tasks},
        "episodes": results,
        "seconds": time.perf_counter() - start,
        "env": dataclasses.asdict(env.config),
    }
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def parse_tasks(parser: argparse.ArgumentParser, text: str) -> tuple[str, ...]:
    """``--tasks``' comma-separated task kinds; a parser error unless each is one of TASK_KINDS."""
    tasks = tuple(t for t in text.split(",") if t)
    if not tasks or set(tasks) - set(TASK_KINDS):
        parser.error(f"--tasks {text!r}: choose one or more of {','.join(TASK_KINDS)}")
    return tasks


def format_summary(summary: dict) -> str:
    lines = [f"{'task':<12}{'success':>9}{'95% CI':>17}{'episodes':>10}{'mean len':>10}"]
    rows = [*summary["per_task"].items(), ("overall", summary["overall"])]
    for name, s in rows:
        lo, hi = s["ci95"]
        lines.append(
            f"{name:<12}{s['success_rate']:>9.2f}{f'[{lo:.2f}, {hi:.2f}]':>17}{s['episodes']:>10}"
            f"{s['mean_length']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", choices=("expert", "random", "noop"), default="expert")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task kind")
    parser.add_argument("--tasks", default=",".join(TASK_KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.0, help="expert action noise")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--videos", type=int, default=3)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes} (a rate of no episodes is no result)")
    env = TabletopEnv(EnvConfig(image_size=args.image_size))
    policy = {
        "expert": lambda: ExpertPolicy(env, args.noise, args.seed),
        "random": lambda: RandomPolicy(args.seed),
        "noop": NoOpPolicy,
    }[args.policy]()
    tasks = parse_tasks(parser, args.tasks)
    summary = evaluate(policy, env, args.episodes, tasks, args.seed, args.out, args.videos)
    print(format_summary(summary))
    if args.out is not None:
        print(f"summary: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
