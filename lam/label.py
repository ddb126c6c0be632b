"""Labels videos with latent action codes: LAPA's latent-pretraining JSONL.

    python -m lam.label --lam runs/lam --source folder --path data/tabletop/videos --out latent.jsonl \\
        [--tail clamp|drop] [--vqgan_checkpoint runs/vq/vqgan]

``--lam`` is a LAM export or training run directory, or LAPA's ``.pt`` (then ``--image_size``
and ``--code_seq_len`` describe it). One row per frame t of every episode, in episode order:

    {"image": <frame t>, "instruction": "<s> You are a helpful assistant. USER: What action
     should the robot take to `<task>` ASSISTANT:", "delta": ["3", "0", "7", "1"],
     "fields": "[instruction],[vision],delta"}  (+ "vision": [...] with --vqgan_checkpoint)

``delta`` holds the codes of the pair (t, t+H). **H and the RLDS image key** are the LAM's own
(its export's ``lam_data.json``): an explicit ``--offset`` / ``--offset_seconds`` / ``--image_key``
that differs is refused unless ``--override_data_settings``; an export without the record (older,
or LAPA's ``.pt``) labels with ``--offset`` (default 1 frame) and says so. An episode without an
instruction is an error (its prompt would ask about an empty task) unless
``--allow_empty_instruction``. **End of an episode**: frames with no t+H
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
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lam.checkpoint import DATA_FILE, export_dir, load_data_settings, load_lam
from lam.data import PairBatches, frame_pairs
from lam.model import LatentActionModel
from latent_pretraining.core.batched import LocalBatchApply
from latent_pretraining.core.cli import exit_on, parse_shard
from latent_pretraining.core.files import check_output_paths
from latent_pretraining.core.partial import PartialJsonl, fingerprint
from latent_pretraining.core.partial import paths as partial_paths
from latent_pretraining.episodes import SOURCE_KINDS, Episode, open_episodes
from latent_pretraining.prompts import LATENT_FIELDS, lapa_instruction

FIELDS = LATENT_FIELDS
DEFAULT_OFFSET, DEFAULT_IMAGE_KEY = 1, "image"  # for a LAM whose data settings are not recorded


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
    allow_empty_instruction: bool = False,
) -> dict:
    """Writes ``out`` (atomically, resumably); returns counts and code usage.

    ``provenance`` describes the model and options beyond the ones given here (the CLI
    passes the checkpoint's fingerprint); a leftover partial from any other provenance is
    refused, or discarded with ``restart``. An episode with an empty instruction is a
    ValueError naming it unless ``allow_empty_instruction``."""
    if not allow_empty_instruction:
        _check_instructions(episodes)
    pairs = frame_pairs(episodes, offset, offset_seconds, tail)[shard[0] :: shard[1]]
    frames_dir = frames_dir or out.with_name(out.name + ".frames")
    record = {
        "tool": "lam.label",
        "episodes": episodes_digest(episodes),
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
                    for j, row in enumerate(rows):
                        row["vision"] = vision[j]
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


def _check_instructions(episodes: list[Episode]) -> None:
    """Raises ValueError naming the first episode whose instruction is empty (and how many are):
    LAPA's prompt would then name no task, and the VLA learn codes for an empty question."""
    empty = [e.episode_id for e in episodes if not e.instruction.strip()]
    if empty:
        more = f" (and {len(empty) - 1} more of {len(episodes)})" if len(empty) > 1 else ""
        raise ValueError(
            f"episode {empty[0]!r} has an empty instruction{more}: its rows would read "
            f"{lapa_instruction('')!r}. Give the source instructions, or pass --allow_empty_instruction"
        )


def _h_text(offset: int, offset_seconds: float | None) -> str:
    """H as the options spell it: ``offset 30 frames`` or ``offset_seconds 0.5``."""
    if offset_seconds is not None:
        return f"offset_seconds {offset_seconds}"
    return f"offset {offset} frame{'' if offset == 1 else 's'}"


def data_options(
    recorded: dict | None,
    where: str,
    offset: int | None,
    offset_seconds: float | None,
    image_key: str | None,
    override: bool = False,
) -> tuple[dict, str]:
    """The ``offset``, ``offset_seconds`` and ``image_key`` to label with, and a line saying where
    they come from. Unset ones come from ``recorded``, the LAM's data settings (read from
    ``where``); a set one that differs is a ValueError naming both values unless ``override``."""
    if recorded is None:
        chosen = {
            "offset": DEFAULT_OFFSET if offset is None else offset,
            "offset_seconds": offset_seconds,
            "image_key": image_key or DEFAULT_IMAGE_KEY,
        }
        return chosen, (
            f"{where} records no data settings (an export from before {DATA_FILE}, or LAPA's .pt): "
            f"labelling with {_h_text(chosen['offset'], chosen['offset_seconds'])}; make sure the LAM "
            "was trained with it"
        )
    given = None  # the H the options set: (offset, offset_seconds)
    if offset_seconds is not None:
        given = (recorded["offset"] if offset is None else offset, offset_seconds)
    elif offset is not None:
        given = (offset, None)
    trained = (recorded["offset"], recorded["offset_seconds"])
    conflicts = []
    if given is not None and _h_text(*given) != _h_text(*trained):
        conflicts.append(f"--{_h_text(*given)} differs from the LAM's training {_h_text(*trained)}")
    if image_key is not None and recorded["image_key"] not in (None, image_key):
        conflicts.append(f"--image_key {image_key} differs from the LAM's training {recorded['image_key']}")
    if conflicts and not override:
        raise ValueError(
            f"{'; '.join(conflicts)} ({where}): the LAM's codes describe the change it was trained on. "
            "Leave the option out, or pass --override_data_settings to label with it anyway"
        )
    offset, offset_seconds = given or trained
    chosen = {
        "offset": offset,
        "offset_seconds": offset_seconds,
        "image_key": image_key or recorded["image_key"] or DEFAULT_IMAGE_KEY,
    }
    why = f"--override_data_settings: {'; '.join(conflicts)}" if conflicts else f"the LAM's, {where}"
    return chosen, f"labelling with {_h_text(offset, offset_seconds)} ({why})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lam", required=True, help="LAM export / run directory, or LAPA's .pt")
    p.add_argument("--source", required=True, choices=SOURCE_KINDS)
    p.add_argument("--path", required=True)
    p.add_argument(
        "--image_root",
        default=None,
        help="jsonl: the folder image paths may not leave (default: the JSONL's)",
    )
    p.add_argument("--out", required=True, help="latent-pretraining JSONL to write")
    p.add_argument("--offset", type=int, default=None, help="H in frames (default: the LAM's, else 1)")
    p.add_argument("--offset_seconds", type=float, default=None, help="H in seconds (needs the source's fps)")
    p.add_argument("--tail", choices=("clamp", "drop"), default="clamp", help="frames without t+H")
    p.add_argument(
        "--image_key",
        default=None,
        help="rlds: steps/observation/<image_key> (default: the LAM's, else image)",
    )
    p.add_argument(
        "--override_data_settings",
        action="store_true",
        help="label with --offset/--offset_seconds/--image_key although the LAM was trained with others",
    )
    p.add_argument(
        "--allow_empty_instruction", action="store_true", help="label episodes that have no instruction"
    )
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


def episodes_digest(episodes: list[Episode]) -> dict:
    """The episodes' count and a hash of their ids and lengths: a fixed-size identity of a source."""
    text = json.dumps([[e.episode_id, e.num_frames] for e in episodes])
    return {"count": len(episodes), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    check_output_paths(
        {"--path": Path(args.path), "--lam": Path(args.lam), "--vqgan_checkpoint": args.vqgan_checkpoint},
        {"--out": out, **{f"--out's {kind}": path for kind, path in partial_paths(out).items()}},
    )
    model = load_lam(args.lam, image_size=args.image_size, code_seq_len=args.code_seq_len)
    recorded = load_data_settings(args.lam)
    where = str(export_dir(args.lam) / DATA_FILE) if recorded is not None else args.lam
    data, note = data_options(
        recorded, where, args.offset, args.offset_seconds, args.image_key, args.override_data_settings
    )
    print(note, flush=True)
    options = {"image_key": data["image_key"]} if args.source == "rlds" else {}
    if args.source == "jsonl" and args.image_root:
        options["image_root"] = Path(args.image_root)
    episodes = open_episodes(args.source, args.path, **options)
    vqgan_encode = None
    if args.vqgan_checkpoint:
        from latent_pretraining.vqgan.encode import load_row_encoder

        vqgan_encode = load_row_encoder(args.vqgan_checkpoint, args.vqgan_config)
    provenance = {
        "lam": fingerprint(export_dir(args.lam) or args.lam),  # a .pt file, or the export directory
        # a folder source is identified by its path and the episodes' ids and lengths (above)
        "source": [
            args.source,
            fingerprint(args.path) if os.path.isfile(args.path) else str(Path(args.path).resolve()),
            data["image_key"],
            args.image_root and str(Path(args.image_root).resolve()),
        ],
        "vqgan": [fingerprint(args.vqgan_checkpoint), args.vqgan_config],
    }
    return label(
        model,
        episodes,
        Path(args.out),
        offset=data["offset"],
        offset_seconds=data["offset_seconds"],
        tail=args.tail,
        batch_size=args.batch_size,
        frames_dir=Path(args.frames_dir) if args.frames_dir else None,
        vqgan_encode=vqgan_encode,
        shard=args.shard,
        provenance=provenance,
        restart=args.restart,
        allow_empty_instruction=args.allow_empty_instruction,
    )


if __name__ == "__main__":
    main()
