"""Splits pipeline rows (JSONL) by episode into training and held-out files.

    python -m data.split_episodes --input rows.jsonl --train train.jsonl --eval eval.jsonl --held_out 3 \
        [--train_episodes N]

The last ``--held_out`` episodes, in the order their rows first appear, go to ``--eval``; no
episode is in both files. A row's episode is its ``episode_id`` field, else the folder of its
``image`` (the tabletop export's ``.../episode_000012/004.png``), as ``episodes.jsonl`` reads
rows. ``--train_episodes N`` keeps only the first N of the other episodes in ``--train`` (a
labelled-data curve: the same held-out episodes, fewer labelled ones). Both files are written
together.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.files import check_output_paths, write_together
from latent_pretraining.core.jsonl import read_jsonl_lines


def episode_of(row: dict, where: str) -> str:
    """The row's ``episode_id``, else the folder of its ``image``."""
    if "episode_id" in row:
        return str(row["episode_id"])
    if isinstance(row.get("image"), str):
        return str(Path(row["image"]).parent)
    raise ValueError(f"{where}: neither an 'episode_id' nor an 'image' field to take the episode from")


def split(path: Path, held_out: int, train_episodes: int = 0) -> tuple[list[str], list[str], int]:
    """(training lines, held-out lines, number of training episodes) of the JSONL file at ``path``;
    ``train_episodes`` > 0 keeps only the first that many training episodes."""
    lines, episodes = [], []
    for number, line, row in read_jsonl_lines(path):
        lines.append(line if line.endswith("\n") else line + "\n")
        episodes.append(episode_of(row, f"{path}:{number}"))
    order = list(dict.fromkeys(episodes))
    if len(order) < 2:
        raise ValueError(f"{path}: {len(order)} episode(s); a split needs at least 2")
    if not 0 < held_out < len(order):
        raise ValueError(f"{path}: {len(order)} episodes; --held_out must be between 1 and {len(order) - 1}")
    evaluated, trained = set(order[-held_out:]), order[:-held_out]
    if train_episodes > len(trained):
        raise ValueError(
            f"{path}: --train_episodes {train_episodes}, but only {len(trained)} episodes are not held out"
        )
    kept = set(trained[:train_episodes] if train_episodes > 0 else trained)
    train = [line for line, e in zip(lines, episodes, strict=True) if e in kept]
    held = [line for line, e in zip(lines, episodes, strict=True) if e in evaluated]
    return train, held, len(kept)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True, help="the rows of the other episodes")
    p.add_argument("--eval", type=Path, required=True, help="the rows of the held-out episodes")
    p.add_argument("--held_out", type=int, required=True, help="episodes to hold out (the last ones)")
    p.add_argument("--train_episodes", type=int, default=0, help="keep only the first N others (0: all)")
    args = p.parse_args(argv)
    with exit_on():
        check_output_paths({"--input": args.input}, {"--train": args.train, "--eval": args.eval})
        train, held, episodes = split(args.input, args.held_out, args.train_episodes)
        write_together(
            [
                (args.train, lambda path: path.write_text("".join(train))),
                (args.eval, lambda path: path.write_text("".join(held))),
            ]
        )
    print(f"{len(train)} rows of {episodes} episodes -> {args.train}")
    print(f"{len(held)} rows of {args.held_out} held-out episodes -> {args.eval}")


if __name__ == "__main__":
    main()
