"""Relabels latent-pretraining rows with codes made from the true actions: the upper-bound arm.

    python -m data.action_codes --latent latent.jsonl --frames videos/frames.jsonl --out true.jsonl \\
        [--offset 1] [--codes 8]

The paper's third starting point pretrains on the true actions of the same episodes the LAM
labelled. Every row of ``--latent`` (``lam.label``'s output) keeps its image, instruction and
vision tokens; its ``delta`` becomes the true action of the same pair (t, t+H): dx, dy, dz and dyaw
summed over ``actions[t : min(t + H, last frame)]`` (zero on an episode's last frame, as the LAM's
clamped pairs), each cut into ``--codes`` equal-width bins between the dimension's smallest and
largest value. So the rows have the LAM's four code positions and vocabulary, and the same
pretraining config reads them. ``--frames`` is the tabletop export's ``frames.jsonl`` (a row per
frame: ``episode_id``, ``t``, ``image``, and ``raw_actions`` except on the last frame).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.files import check_output_paths, write_together
from latent_pretraining.core.jsonl import read_jsonl_objects

DIMS = (0, 1, 2, 5)  # dx, dy, dz, dyaw: one code position each


def pair_actions(frames_path: Path, offset: int) -> dict[str, np.ndarray]:
    """The summed (dx, dy, dz, dyaw) of the pair (t, t+H) of every frame, keyed by its image's absolute
    path (lam.label keeps a relative ``--path`` relative; the tabletop export writes absolute ones)."""
    episodes: dict[str, dict[int, tuple[str, list[float] | None]]] = {}
    for number, row in read_jsonl_objects(frames_path):
        where = f"{frames_path}:{number}"
        for field in ("episode_id", "t", "image"):
            if field not in row:
                raise ValueError(f"{where}: no '{field}' field")
        actions = row.get("raw_actions")
        if actions is not None and (not isinstance(actions, list) or len(actions) <= max(DIMS)):
            raise ValueError(f"{where}: 'raw_actions' must be a list of at least {max(DIMS) + 1} numbers")
        image = os.path.abspath(str(row["image"]))
        episodes.setdefault(str(row["episode_id"]), {})[int(row["t"])] = (image, actions)
    out: dict[str, np.ndarray] = {}
    for episode_id, frames in episodes.items():
        last = max(frames)
        steps = np.zeros((last + 1, len(DIMS)))
        for t, (_, actions) in frames.items():
            if t < last:
                if actions is None:
                    raise ValueError(f"{frames_path}: episode {episode_id!r} frame {t} has no 'raw_actions'")
                steps[t] = [actions[d] for d in DIMS]
        for t, (image, _) in frames.items():
            out[image] = steps[t : min(t + offset, last)].sum(axis=0)
    return out


def codes_of(values: np.ndarray, codes: int) -> np.ndarray:
    """int [N, D]: each column cut into ``codes`` equal-width bins between its minimum and maximum."""
    low, high = values.min(axis=0), values.max(axis=0)
    width = np.where(high > low, (high - low) / codes, 1.0)
    return np.clip(((values - low) / width).astype(np.int64), 0, codes - 1)


def relabel(latent_path: Path, frames_path: Path, offset: int, codes: int) -> list[str]:
    """The lines of ``latent_path`` with ``delta`` replaced by the true actions' codes."""
    if offset < 1 or codes < 2:
        raise ValueError(f"need --offset >= 1 and --codes >= 2, got {offset} and {codes}")
    actions = pair_actions(frames_path, offset)
    rows = []
    for number, row in read_jsonl_objects(latent_path):
        image = row.get("image")
        if not isinstance(image, str) or os.path.abspath(image) not in actions:
            raise ValueError(f"{latent_path}:{number}: image {image!r} is not a frame of {frames_path}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{latent_path}: no rows")
    binned = codes_of(np.stack([actions[os.path.abspath(row["image"])] for row in rows]), codes)
    lines = []
    for row, code in zip(rows, binned, strict=True):
        row["delta"] = [str(int(c)) for c in code]
        lines.append(json.dumps(row) + "\n")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=Path, required=True, help="latent-pretraining rows (lam.label's output)")
    p.add_argument("--frames", type=Path, required=True, help="the tabletop export's videos/frames.jsonl")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--offset", type=int, default=1, help="H: the LAM's frame offset")
    p.add_argument("--codes", type=int, default=8, help="codes per position: the LAM's codebook size")
    args = p.parse_args(argv)
    with exit_on():
        check_output_paths({"--latent": args.latent, "--frames": args.frames}, {"--out": args.out})
        lines = relabel(args.latent, args.frames, args.offset, args.codes)
        write_together([(args.out, lambda path: path.write_text("".join(lines)))])
        print(f"{len(lines)} rows with true-action codes -> {args.out}")


if __name__ == "__main__":
    main()
