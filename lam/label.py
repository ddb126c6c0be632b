"""Labels videos with latent action codes: LAPA's latent-pretraining JSONL.

    python -m lam.label --lam runs/lam --source folder --path data/tabletop/videos --out latent.jsonl \\
        [--offset 1 | --offset_seconds 0.5] [--tail clamp|drop] [--vqgan_checkpoint runs/vq/vqgan]

``--lam`` is a LAM export or training run directory, or LAPA's ``.pt`` (then ``--image_size``
and ``--code_seq_len`` describe it). One row per frame t of every episode, in episode order:

    {"image": <frame t>, "instruction": "<s> You are a helpful assistant. USER: What action
     should the robot take to `<task>` ASSISTANT:", "delta": ["3", "0", "7", "1"],
     "fields": "[instruction],[vision],delta"}  (+ "vision": [...] with --vqgan_checkpoint)

``delta`` holds the codes of the pair (t, t+H). **End of an episode**: frames with no t+H
are paired with the episode's last frame (``--tail clamp``, LAPA's labelling; the last frame
is paired with itself and gets the codes of "no change" as the model sees it) or left out
(``--tail drop``). Sources whose frames are not files (videos, RLDS) get them written as PNG
under ``--frames_dir`` (default ``<out>.frames/``), since the rows point at images.

Codes are computed in batches sharded over this host's devices; rows go to
``<out>.partial`` as they are done and a rerun resumes there when the inputs, model and
options are the same (it is refused otherwise; ``--restart`` discards the partial); the
file is renamed to ``<out>`` only when complete. ``--shard i/n`` labels every n-th row from the i-th (one
shard per host or job).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lam.checkpoint import load_lam
from lam.data import Episode, PairBatches, frame_pairs, open_episodes
from lam.model import LatentActionModel
from latent_pretraining.batched import LocalBatchApply
from latent_pretraining.core.cli import exit_on, parse_shard
from latent_pretraining.core.files import check_output_paths
from latent_pretraining.core.partial import PartialJsonl, fingerprint
from latent_pretraining.prompts import lapa_instruction

FIELDS = "[instruction],[vision],delta"


class CodeLabeler(LocalBatchApply):
    """Hard codes of frame pairs, one compiled program sharded over the local devices."""

    def __init__(self, model: LatentActionModel, batch_size: int):
        super().__init__(model, lambda m, frames: m.codes(frames), batch_size)


def frame_path(episode: Episode, t: int, frames_dir: Path) -> str:
    """The file of frame t: the source's own, or a PNG written under ``frames_dir``."""
    if episode.image_paths is not None:
        return str(episode.image_paths[t])
    path = frames_dir / episode.episode_id.replace("/", "_") / f"{t:05d}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(episode.frame(t)).save(tmp, format="PNG")
        os.replace(tmp, path)
    return str(path)


def label(
    model: LatentActionModel,
    episodes: list[Episode],
    out: Path,
    *,
    offset: int = 1,
    offset_seconds: float | None = None,
    tail: str = "clamp",
    batch_size: int = 64,
    frames_dir: Path | None = None,
    vqgan_encode=None,
    shard: tuple[int, int] = (0, 1),
    provenance: dict | None = None,
    restart: bool = False,
) -> dict:
    """Writes ``out`` (atomically, resumably); returns counts and code usage.

    ``provenance`` describes the model and options beyond the ones given here (the CLI
    passes the checkpoint's fingerprint); a leftover partial from any other provenance is
    refused, or discarded with ``restart``."""
    pairs = frame_pairs(episodes, offset, offset_seconds, tail)[shard[0] :: shard[1]]
    frames_dir = frames_dir or out.with_name(out.name + ".frames")
    record = {
        "tool": "lam.label",
        "episodes": [[e.episode_id, e.num_frames] for e in episodes],
        "model": model.cfg.to_dict(),
        "offset": offset,
        "offset_seconds": offset_seconds,
        "tail": tail,
        "shard": list(shard),
        "frames_dir": str(frames_dir.resolve()),
        "vision": vqgan_encode is not None,
        **(provenance or {}),
    }
    labeler = CodeLabeler(model, batch_size)
    batches = PairBatches(episodes)
    size = model.cfg.image_size
    counts = np.zeros((model.cfg.code_seq_len, model.cfg.codebook_size), np.int64)
    began = time.perf_counter()
    with PartialJsonl(out, record, restart) as partial:
        done = partial.position
        starts = list(range(done, len(pairs), labeler.batch_size))
        with (
            ThreadPoolExecutor(max_workers=1) as pool,
            tqdm(total=len(pairs), initial=done, desc="label", unit="pair") as bar,
        ):
            load = lambda s: batches.make_batch(pairs[s : s + labeler.batch_size], size)["frames"]  # noqa: E731
            upcoming = pool.submit(load, starts[0]) if starts else None
            for k, start in enumerate(starts):
                frames = upcoming.result()
                if k + 1 < len(starts):
                    upcoming = pool.submit(load, starts[k + 1])
                codes = labeler(frames)
                rows = []
                for (i, t, _), row_codes in zip(pairs[start : start + len(frames)], codes, strict=True):
                    episode = episodes[int(i)]
                    rows.append(
                        {
                            "image": frame_path(episode, int(t), frames_dir),
                            "instruction": lapa_instruction(episode.instruction),
                            "delta": [str(int(c)) for c in row_codes],
                            "fields": FIELDS,
                        }
                    )
                    counts[np.arange(len(row_codes)), row_codes] += 1
                if vqgan_encode is not None:
                    vision, failures = vqgan_encode(rows, [r["image"] for r in rows])
                    if failures:
                        raise next(iter(failures.values()))
                    for k, row in enumerate(rows):
                        row["vision"] = vision[k]
                partial.append((json.dumps(row) + "\n" for row in rows), start + len(rows))
                bar.update(len(rows))
        partial.finish()
    took = time.perf_counter() - began
    labelled = len(pairs) - done
    return {
        "rows": len(pairs),
        "resumed_after": int(done),
        "labelled": int(labelled),
        "seconds": round(took, 2),
        "pairs_per_s": round(labelled / took, 1) if took else 0.0,
        "codes_used_per_position": [int((c > 0).sum()) for c in counts],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lam", required=True, help="LAM export / run directory, or LAPA's .pt")
    p.add_argument("--source", required=True, choices=("folder", "video", "rlds", "jsonl"))
    p.add_argument("--path", required=True)
    p.add_argument("--out", required=True, help="latent-pretraining JSONL to write")
    p.add_argument("--offset", type=int, default=1, help="H in frames")
    p.add_argument("--offset_seconds", type=float, default=None, help="H in seconds (needs the source's fps)")
    p.add_argument("--tail", choices=("clamp", "drop"), default="clamp", help="frames without t+H")
    p.add_argument("--image_key", default="image", help="rlds: steps/observation/<image_key>")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--frames_dir", default=None)
    p.add_argument("--vqgan_checkpoint", default=None, help="add 'vision' tokens with this VQGAN")
    p.add_argument("--vqgan_config", default=None)
    p.add_argument("--image_size", type=int, default=256, help="for a LAPA .pt")
    p.add_argument("--code_seq_len", type=int, default=4, help="for a LAPA .pt")
    p.add_argument(
        "--shard", type=parse_shard, default=(0, 1), help="i/n: label every n-th row from the i-th"
    )
    p.add_argument(
        "--restart", action="store_true", help="discard a leftover partial output instead of resuming it"
    )
    args = p.parse_args(argv)
    with exit_on():
        summary = _run(args)
    print(json.dumps(summary), flush=True)


def _run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    check_output_paths(
        {"--path": Path(args.path), "--lam": Path(args.lam), "--vqgan_checkpoint": args.vqgan_checkpoint},
        {"--out": out},
    )
    model = load_lam(args.lam, image_size=args.image_size, code_seq_len=args.code_seq_len)
    options = {"image_key": args.image_key} if args.source == "rlds" else {}
    episodes = open_episodes(args.source, args.path, **options)
    vqgan_encode = None
    if args.vqgan_checkpoint:
        from latent_pretraining.vqgan.encode import load_row_encoder

        vqgan_encode = load_row_encoder(args.vqgan_checkpoint, args.vqgan_config)
    provenance = {
        "lam": fingerprint(export if (export := Path(args.lam) / "export").is_dir() else args.lam),
        # a folder source is identified by its path and the episodes' ids and lengths (above)
        "source": [
            args.source,
            fingerprint(args.path) if os.path.isfile(args.path) else args.path,
            args.image_key,
        ],
        "vqgan": [fingerprint(args.vqgan_checkpoint), args.vqgan_config],
    }
    return label(
        model,
        episodes,
        Path(args.out),
        offset=args.offset,
        offset_seconds=args.offset_seconds,
        tail=args.tail,
        batch_size=args.batch_size,
        frames_dir=Path(args.frames_dir) if args.frames_dir else None,
        vqgan_encode=vqgan_encode,
        shard=args.shard,
        provenance=provenance,
        restart=args.restart,
    )


if __name__ == "__main__":
    main()
