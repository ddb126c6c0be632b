"""Pre-tokenizer: adds VQGAN codes (``vision``) to JSONL rows that name an ``image``.

    python -m latent_pretraining.vqgan encode --checkpoint runs/vq/vqgan --input rows.jsonl \\
        --output rows.vision.jsonl [--batch_size 64] [--crop] [--skip_errors]

Codes are flattened row-major (LAPA's layout): 256 per image for LWM's tokenizer,
``(resolution / 2**(levels-1))**2`` in general. Images are preprocessed as LAPA's
pre-tokenisation does (longest side, then square resize, [-1, 1]); ``--crop`` adds
the centred 90% crop for models trained with augmentation. Batches are split over
all devices. Output goes to ``<output>.partial`` and is renamed when complete; a
rerun resumes after the rows already written. An unreadable image is an error naming
the input line (or, with ``--skip_errors``, a skipped and counted row).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ml_collections
import numpy as np
from tqdm import tqdm

from latent_pretraining.batched import LocalBatchApply
from latent_pretraining.vqgan.images import load_image, preprocess
from latent_pretraining.vqgan.lwm_checkpoint import load_lwm_vqgan
from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config


class EncodeError(ValueError):
    """A row that cannot be encoded."""


def resolve_config(checkpoint: Path, config: str | None) -> ml_collections.ConfigDict:
    """``config``: a preset name or a JSON file; default: ``vqgan_config.json`` beside the
    checkpoint if present, else LWM's released configuration."""
    if config is None:
        beside = checkpoint.parent / "vqgan_config.json"
        config = str(beside) if beside.exists() else "lwm"
    if config.endswith(".json"):
        return ml_collections.ConfigDict(json.loads(Path(config).read_text()))
    return get_vqgan_config(config)


def rows_done(partial: Path) -> int:
    """Complete lines already in a partial output; a cut-off last line is removed."""
    if not partial.exists():
        return 0
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(partial, "r+b") as f:
            f.truncate(end)
    return data[:end].count(b"\n")


class Encoder(LocalBatchApply):
    """Batched, data-parallel encoding of preprocessed images with one compiled program."""

    def __init__(self, model: VQGAN, batch_size: int):
        super().__init__(model, lambda m, x: m.encode(x)[1], batch_size)  # each host: its own rows
        self.resolution = model.config.resolution

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return super().__call__(images).reshape(len(images), -1)


def encode_jsonl(
    model: VQGAN,
    input_path: Path,
    output_path: Path,
    batch_size: int = 64,
    crop: bool = False,
    skip_errors: bool = False,
    image_root: Path | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Writes ``output_path`` (atomically, resumably); returns counts. ``shard=(i, n)``
    encodes only input lines i, i+n, i+2n, ... (one shard per host)."""
    partial = output_path.with_name(output_path.name + ".partial")
    done = rows_done(partial)
    with open(input_path) as f:
        numbered = [(n, line) for n, line in enumerate(f, start=1) if (n - 1) % shard[1] == shard[0]]
    encoder = Encoder(model, batch_size)
    skipped: list[int] = []
    start = time.perf_counter()
    pending: list[tuple[dict, np.ndarray]] = []

    def flush(out) -> None:
        if not pending:
            return
        codes = encoder(np.stack([image for _, image in pending]))
        for (row, _), row_codes in zip(pending, codes, strict=True):
            out.write(json.dumps({**row, "vision": row_codes.tolist()}) + "\n")
        out.flush()
        pending.clear()

    with open(partial, "a") as out, tqdm(total=len(numbered), initial=done, desc="encode", unit="row") as bar:
        for number, line in numbered[done:]:
            where = f"{input_path}:{number}"
            try:
                row = json.loads(line)
                if "image" not in row:
                    raise EncodeError(f"{where}: no 'image' field")
                path = Path(row["image"])
                if image_root is not None and not path.is_absolute():
                    path = image_root / path
                try:
                    image = load_image(path)
                except Exception as e:
                    raise EncodeError(f"{where}: cannot read image {path}: {e}") from e
                pending.append((row, preprocess(image, encoder.resolution, crop=crop)))
            except (EncodeError, json.JSONDecodeError) as e:
                if not skip_errors:
                    flush(out)  # keep what is done: a rerun resumes here
                    raise EncodeError(
                        str(e) if isinstance(e, EncodeError) else f"{where}: invalid JSON: {e}"
                    ) from e
                skipped.append(number)
            if len(pending) == encoder.batch_size:
                flush(out)
            bar.update(1)
        flush(out)
    if skipped:
        (output_path.with_name(output_path.name + ".skipped.json")).write_text(json.dumps(skipped))
    os.replace(partial, output_path)
    took = time.perf_counter() - start
    encoded = len(numbered) - done - len(skipped)
    return {
        "rows": len(numbered),
        "resumed_after": done,
        "encoded": encoded,
        "skipped": len(skipped),
        "skipped_lines": skipped[:20],
        "seconds": took,
        "images_per_s": encoded / took if took else 0.0,
    }


def load_model(checkpoint: Path, config: str | None) -> VQGAN:
    cfg = resolve_config(checkpoint, config)
    return load_lwm_vqgan(checkpoint, cfg)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latent_pretraining.vqgan encode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a vqgan pickle (LWM's format)")
    parser.add_argument(
        "--config", default=None, help="preset (lwm/small/tiny) or JSON; default: beside checkpoint"
    )
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--crop", action="store_true", help="centred 90%% crop (models trained with augmentation)"
    )
    parser.add_argument("--skip_errors", action="store_true")
    parser.add_argument("--image_root", type=Path, default=None, help="base for relative image paths")
    parser.add_argument(
        "--shard", default="0/1", help="I/N: encode input lines I, I+N, ... (one shard per host)"
    )
    args = parser.parse_args(argv[1:])
    index, count = (int(v) for v in args.shard.split("/"))
    if not 0 <= index < count:
        parser.error(f"--shard {args.shard}: need 0 <= I < N")
    model = load_model(args.checkpoint, args.config)
    counts = encode_jsonl(
        model,
        args.input,
        args.output,
        args.batch_size,
        args.crop,
        args.skip_errors,
        args.image_root,
        (index, count),
    )
    print(
        f"wrote {args.output}: {counts['encoded']} rows encoded"
        + (f" (resumed after {counts['resumed_after']})" if counts["resumed_after"] else "")
        + (f", {counts['skipped']} skipped (lines {counts['skipped_lines']})" if counts["skipped"] else "")
        + f", {counts['images_per_s']:.1f} images/s"
    )
