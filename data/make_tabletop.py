"""Writes tabletop-world episodes in every format the pipeline reads.

    python -m data.make_tabletop --out DIR --episodes 200 [--image_size 64] [--noise 0.1]

Layout of DIR (written under a temporary name and renamed when complete, so a run
that dies never leaves a dataset that looks finished):

    videos/index.json            one entry per episode: id, task, instruction, success, frames
    videos/frames.jsonl          one row per frame: id, episode_id, t, image (absolute path), instruction,
                                 raw_actions (the 7 floats taken at that frame; absent on the last frame)
    videos/<episode_id>/000.png  frames (unlabeled videos: for the latent action model)
    rlds/tabletop/1.0.0/         the same episodes as an RLDS/TFDS dataset (TFRecords)
    finetune.json                LAPA's finetune JSON (one row per step of successful episodes)
    summary.json                 counts, expert success rate, disk size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.files import stale_siblings
from latent_pretraining.prompts import LAPA_QUESTION
from sim.env import EnvConfig, TabletopEnv
from sim.expert import ScriptedExpert
from sim.tasks import TASK_KINDS

FORMATS = ("videos", "rlds", "finetune")


def run_episode(env: TabletopEnv, seed: int, task: str, noise: float) -> dict[str, Any]:
    """Simulates one expert episode; everything follows from the seed."""
    frames = [env.reset(seed, task)]
    expert = ScriptedExpert(env.task, noise=noise, rng=np.random.default_rng(seed))
    states = [env.state.vector()]
    actions = []
    done, info = False, {"success": False}
    while not done:
        action = expert.act(env.state)
        image, _, done, info = env.step(action)
        actions.append(np.asarray(action, np.float64))
        frames.append(image)
        states.append(env.state.vector())
    return {
        "episode_id": f"episode_{seed:06d}",
        "seed": seed,
        "task": task,
        "instruction": env.instruction,
        "success": bool(info["success"]),
        "frames": frames,
        "actions": actions,
        "states": states,
    }


def episodes(
    config: EnvConfig, count: int, seed: int, tasks: tuple[str, ...], noise: float
) -> Iterator[dict]:
    env = TabletopEnv(config)
    for i in range(count):
        yield run_episode(env, seed + i, tasks[i % len(tasks)], noise)


def finetune_rows(episode: dict[str, Any], frame_dir: Path) -> list[dict[str, Any]]:
    """LAPA finetune JSON rows: one per step, the image before the step and its action."""
    rows = []
    for t, action in enumerate(episode["actions"]):
        state = episode["states"][t]
        rows.append(
            {
                "id": f"{episode['episode_id']}_{t:03d}",
                "image": str(frame_dir / f"{t:03d}.png"),
                "conversations": [
                    {
                        "from": "human",
                        "value": "<image>\n" + LAPA_QUESTION.format(task=episode["instruction"]),
                    },
                    {
                        "from": "gpt",
                        "raw_actions": [float(a) for a in action],
                        "states": {
                            "eef_pos": [float(v) for v in state[:3]],
                            "eef_yaw": float(state[3]),
                            "gripper_closed": float(state[4]),
                        },
                    },
                ],
            }
        )
    return rows


def _disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_dataset(
    out: Path,
    num_episodes: int,
    config: EnvConfig,
    seed: int = 0,
    tasks: tuple[str, ...] = TASK_KINDS,
    noise: float = 0.0,
    formats: tuple[str, ...] = FORMATS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes the dataset atomically and returns its summary."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    if "finetune" in formats and "videos" not in formats:
        raise ValueError("the finetune JSON points at the video frames: add 'videos' to --formats")
    if num_episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {num_episodes}")
    out = out.resolve()
    _clean_after_killed_runs(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    try:
        index, rows, frames_total, successes = [], [], 0, 0
        if "videos" in formats or "finetune" in formats:
            bar = tqdm(
                episodes(config, num_episodes, seed, tasks, noise), total=num_episodes, desc="episodes"
            )
            (tmp / "videos").mkdir()
            frames_jsonl = open(tmp / "videos" / "frames.jsonl", "w")  # noqa: SIM115 (closed below)
            for episode in bar:
                ep_dir = tmp / "videos" / episode["episode_id"]
                ep_dir.mkdir(parents=True)
                for t, frame in enumerate(episode["frames"]):
                    Image.fromarray(frame).save(ep_dir / f"{t:03d}.png")
                    row = {
                        "id": f"{episode['episode_id']}_{t:03d}",
                        "episode_id": episode["episode_id"],
                        "t": t,
                        "image": str(out / "videos" / episode["episode_id"] / f"{t:03d}.png"),
                        "instruction": episode["instruction"],
                    }
                    if t < len(episode["actions"]):  # the last frame has no action
                        row["raw_actions"] = [float(a) for a in episode["actions"][t]]
                    frames_jsonl.write(json.dumps(row) + "\n")
                frames_total += len(episode["frames"])
                successes += episode["success"]
                index.append(
                    {k: episode[k] for k in ("episode_id", "seed", "task", "instruction", "success")}
                    | {"num_frames": len(episode["frames"]), "frames_dir": episode["episode_id"]}
                )
                if "finetune" in formats and episode["success"]:
                    rows.extend(finetune_rows(episode, out / "videos" / episode["episode_id"]))
            frames_jsonl.close()
            (tmp / "videos" / "index.json").write_text(
                json.dumps(
                    {
                        "image_size": config.image_size,
                        "frame_pattern": "{frames_dir}/{t:03d}.png",
                        "episodes": index,
                    },
                    indent=1,
                )
            )
        if "finetune" in formats:
            (tmp / "finetune.json").write_text(json.dumps(rows))
        if "rlds" in formats:
            from data.tabletop_rlds import write_rlds  # tensorflow is imported only when needed

            tally = {"frames": 0, "successes": 0}

            def counted() -> Iterator[dict]:  # simulation is deterministic: re-run instead of keeping frames
                for episode in episodes(config, num_episodes, seed, tasks, noise):
                    tally["frames"] += len(episode["frames"])
                    tally["successes"] += episode["success"]
                    yield episode

            write_rlds(counted, tmp / "rlds", config.image_size)
            if not index:
                frames_total, successes = tally["frames"], tally["successes"]
        summary = {
            "episodes": num_episodes,
            "frames": frames_total,
            "expert_success_rate": successes / num_episodes,
            "finetune_rows": len(rows),
            "formats": list(formats),
            "seed": seed,
            "tasks": list(tasks),
            "noise": noise,
            "image_size": config.image_size,
            "seconds": round(time.perf_counter() - start, 2),
        }
        summary["disk_bytes"] = _disk_size(tmp)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _clean_after_killed_runs(out: Path) -> None:
    """Removes a killed run's half-written copy; puts back an old dataset that a run killed
    mid-replacement had moved aside (``--overwrite``), or removes it if the new one landed."""
    for tmp in stale_siblings(out, "tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in stale_siblings(out, "old"):
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    parser.add_argument("--tasks", default=",".join(TASK_KINDS), help="task kinds, cycled over episodes")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="expert action noise (fraction of the limits)"
    )
    parser.add_argument("--max_steps", type=int, default=100)
    parser.add_argument("--moving_distractor", action="store_true")
    parser.add_argument("--camera_jitter", type=float, default=0.0, help="pixels (std)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    config = EnvConfig(
        image_size=args.image_size,
        max_steps=args.max_steps,
        moving_distractor=args.moving_distractor,
        camera_jitter=args.camera_jitter,
    )
    tasks = tuple(t for t in args.tasks.split(",") if t)
    bad = set(tasks) - set(TASK_KINDS)
    if bad:
        parser.error(f"unknown task kinds {sorted(bad)}; choose from {TASK_KINDS}")
    with exit_on():
        summary = make_dataset(
            args.out,
            args.episodes,
            config,
            args.seed,
            tasks,
            args.noise,
            tuple(f for f in args.formats.split(",") if f),
            args.overwrite,
        )
    print(
        f"wrote {args.out}: {summary['episodes']} episodes, {summary['frames']} frames, "
        f"expert success {summary['expert_success_rate']:.1%}, {summary['finetune_rows']} finetune rows, "
        f"{summary['disk_bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f}s"
    )


if __name__ == "__main__":
    main()
