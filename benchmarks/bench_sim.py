"""Tabletop world speed: rendered frames per second on one CPU core.

    python benchmarks/bench_sim.py [--frames 3000]

Measures, at 64x64 and 256x256: rendering alone (a fixed mid-episode state), and
full environment steps (scripted expert + physics + rendering) over whole episodes;
then the scripted expert's success rate per task kind at several action-noise levels
(--expert_episodes per task and level). Prints tables and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from sim.env import EnvConfig, TabletopEnv
from sim.expert import ScriptedExpert
from sim.render import render
from sim.tasks import TASK_KINDS


def bench_render(size: int, frames: int) -> float:
    env = TabletopEnv(EnvConfig(image_size=size))
    env.reset(0, "pick_place")
    state, background = env.state, env._background
    start = time.perf_counter()
    for _ in range(frames):
        render(state, background)
    return frames / (time.perf_counter() - start)


def bench_steps(size: int, frames: int) -> float:
    env = TabletopEnv(EnvConfig(image_size=size))
    done_frames, seed = 0, 0
    start = time.perf_counter()
    while done_frames < frames:
        env.reset(seed, TASK_KINDS[seed % 3])
        expert = ScriptedExpert(env.task, rng=np.random.default_rng(seed))
        done = False
        while not done:
            _, _, done, _ = env.step(expert.act(env.state))
            done_frames += 1
        seed += 1
    return done_frames / (time.perf_counter() - start)


def expert_success(kind: str, noise: float, episodes: int) -> float:
    env = TabletopEnv()
    wins = 0
    for seed in range(episodes):
        env.reset(seed, kind)
        expert = ScriptedExpert(env.task, noise=noise, rng=np.random.default_rng(seed))
        done, info = False, {}
        while not done:
            _, _, done, info = env.step(expert.act(env.state))
        wins += info["success"]
    return wins / episodes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--expert_episodes", type=int, default=100)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    rows = []
    for size in (64, 256):
        n = args.frames if size == 64 else max(args.frames // 8, 50)
        rows.append({"kind": "render", "image_size": size, "frames_per_s": bench_render(size, n)})
        rows.append(
            {"kind": "env_step_with_expert", "image_size": size, "frames_per_s": bench_steps(size, n)}
        )
    print(f"{'measurement':<28}{'size':>6}{'frames/s':>12}")
    for r in rows:
        print(f"{r['kind']:<28}{r['image_size']:>6}{r['frames_per_s']:>12,.0f}")
    noise_levels = (0.0, 0.1, 0.2, 0.3)
    success = [
        {
            "kind": "expert_success",
            "task": kind,
            "noise": noise,
            "success_rate": expert_success(kind, noise, args.expert_episodes),
        }
        for kind in TASK_KINDS
        for noise in noise_levels
    ]
    print(
        f"\nexpert success over {args.expert_episodes} episodes\n{'task':<12}"
        + "".join(f"{f'noise {n}':>11}" for n in noise_levels)
    )
    for kind in TASK_KINDS:
        rates = [r["success_rate"] for r in success if r["task"] == kind]
        print(f"{kind:<12}" + "".join(f"{rate:>11.2f}" for rate in rates))
    for r in rows + success:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
