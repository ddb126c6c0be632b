"""Pre-tokenizer: adds VQGAN codes (``vision``) to JSONL rows that name an ``image``.

    python -m latent_pretraining.vqgan encode --checkpoint runs/vq/vqgan --input rows.jsonl \\
        --output rows.vision.jsonl [--batch_size 64] [--mode resize|center_crop] [--skip_errors]

Codes are flattened row-major (LAPA's layout): 256 per image for LWM's tokenizer,
``(resolution / 2**(levels-1))**2`` in general. Images are preprocessed as LAPA's
pre-tokenisation does (longest side, then square resize, [-1, 1]); ``--mode center_crop``
adds the centred 90% crop for models trained with augmentation. Batches are split over
all devices. Output goes to ``<output>.partial`` and is renamed when complete; a
rerun resumes at the input line it reached when the input, checkpoint and options are
the same, and is refused otherwise (``--restart`` discards the partial). An unreadable
image or row is an error naming the input line (or, with ``--skip_errors``, a skipped
and listed row); blank lines are ignored. Relative image paths join ``--image_root``
and may not leave it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from tqdm import tqdm

from latent_pretraining.core.batched import LocalBatchApply
from latent_pretraining.core.cli import exit_on, parse_shard
from latent_pretraining.core.files import check_output_paths, resolve_under
from latent_pretraining.core.partial import PartialJsonl, fingerprint
from latent_pretraining.core.partial import paths as partial_paths
from latent_pretraining.episodes import load_image
from latent_pretraining.vqgan.images import PP_MODES, check_mode, preprocess
from latent_pretraining.vqgan.lwm_checkpoint import load_lwm_vqgan
from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config, tokens_per_side


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


class Encoder(LocalBatchApply):
    """Batched, data-parallel encoding of preprocessed images with one compiled program."""

    def __init__(self, model: VQGAN, batch_size: int):
        super().__init__(model, lambda m, x: m.encode(x)[1], batch_size)  # each host: its own rows
        self.resolution = model.config.resolution

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return super().__call__(images).reshape(len(images), -1)


class RowEncoder:
    """VQGAN codes of rows' ``image`` files in one of the named preprocessing modes. Relative
    paths join ``image_root`` and may not leave it. Codes and failures come back separately:
    ``({row index: codes}, {row index: EncodeError naming the row})``."""

    def __init__(self, model: VQGAN, image_root: str | os.PathLike | None = None, batch_size: int = 32):
        self.encoder = Encoder(model, batch_size)
        self.image_root = None if image_root is None else Path(image_root)
        self.codebook_size = int(model.config.num_embeddings)
        self.tokens_per_image = tokens_per_side(model.config) ** 2

    def __call__(
        self,
        rows: Sequence[dict],
        labels: Sequence[str],
        mode: str = "resize",
        rng: np.random.Generator | None = None,
    ) -> tuple[dict[int, list[int]], dict[int, EncodeError]]:
        images: dict[int, np.ndarray] = {}
        failures: dict[int, EncodeError] = {}
        for i, (row, where) in enumerate(zip(rows, labels, strict=True)):
            try:
                pixels = load_row_image(row, where, self.image_root)
            except EncodeError as e:
                failures[i] = e
                continue
            images[i] = preprocess(pixels, self.encoder.resolution, mode, rng)
        order = list(images)
        codes: dict[int, list[int]] = {}
        for start in range(0, len(order), self.encoder.batch_size):
            chunk = order[start : start + self.encoder.batch_size]
            for i, c in zip(chunk, self.encoder(np.stack([images[i] for i in chunk])), strict=True):
                codes[i] = c.tolist()
        return codes, failures


def load_row_encoder(
    checkpoint: str | os.PathLike, config: str | None, image_root: str | os.PathLike | None = None
) -> RowEncoder:
    """The row encoder of an LWM ``vqgan`` pickle (config: a preset, a JSON file, or the one beside it)."""
    return RowEncoder(load_model(Path(checkpoint), config), image_root)


def load_row_image(row: dict, where: str, image_root: Path | None) -> np.ndarray:
    """The uint8 image a row's ``image`` names (relative paths join ``image_root`` and may not
    leave it); an EncodeError naming ``where`` if there is none to read."""
    image = row.get("image")
    if not isinstance(image, str) or not image:
        raise EncodeError(f"{where}: field 'image': expected a path string, got {image!r}")
    try:
        path = resolve_under(image, image_root, where)
    except ValueError as e:
        raise EncodeError(str(e)) from None
    try:
        return load_image(path)
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for unreadable files
        raise EncodeError(f"{where}: cannot read image {path}: {e}") from None


def _read_row(raw: bytes, where: str) -> dict | None:
    """A line of the input -> its row; None for a blank line. Raises EncodeError."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EncodeError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise EncodeError(f"{where}: invalid JSON: {e}") from None
    if not isinstance(row, dict):
        raise EncodeError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def encode_jsonl(
    model: VQGAN,
    input_path: Path,
    output_path: Path,
    batch_size: int = 64,
    mode: str = "resize",
    skip_errors: bool = False,
    image_root: Path | None = None,
    shard: tuple[int, int] = (0, 1),
    model_source: dict | None = None,
    restart: bool = False,
) -> dict:
    """Writes ``output_path`` (atomically, resumably); returns counts. ``shard=(i, n)``
    encodes only input lines i, i+n, i+2n, ... (one shard per host). A leftover partial
    resumes at the input line it reached if it came from the same input, model
    (``model_source``, e.g. the checkpoint's fingerprint, plus the config) and options;
    otherwise it is refused, or discarded with ``restart``."""
    check_mode(mode)
    if mode == "augment":
        raise ValueError("pre-tokenising uses a deterministic mode (resize or center_crop), not augment")
    with open(input_path, "rb") as f:
        numbered = [(n, line) for n, line in enumerate(f, start=1) if (n - 1) % shard[1] == shard[0]]
    provenance = {
        "tool": "vqgan encode",
        "input": fingerprint(input_path),
        "model": model_source,
        "config": model.config.to_dict(),
        "mode": mode,
        "image_root": None if image_root is None else str(Path(image_root).resolve()),
        "shard": list(shard),
    }
    encoder = Encoder(model, batch_size)
    start = time.perf_counter()
    pending: list[tuple[dict, np.ndarray]] = []
    with PartialJsonl(output_path, provenance, restart) as out:
        done = out.position
        skipped: list[int] = list(out.extra.get("skipped", []))
        resumed_skipped = len(skipped)

        def flush(position: int) -> None:
            lines = []
            if pending:
                codes = encoder(np.stack([image for _, image in pending]))
                lines = [
                    json.dumps({**row, "vision": c.tolist()}) + "\n"
                    for (row, _), c in zip(pending, codes, strict=True)
                ]
            out.append(lines, position, skipped=skipped)
            pending.clear()

        with tqdm(total=len(numbered), initial=done, desc="encode", unit="row") as bar:
            for k in range(done, len(numbered)):
                number, raw = numbered[k]
                where = f"{input_path}:{number}"
                try:
                    row = _read_row(raw, where)
                    if row is not None:
                        image = load_row_image(row, where, image_root)
                        pending.append((row, preprocess(image, encoder.resolution, mode)))
                except EncodeError:
                    if not skip_errors:
                        flush(k)  # keep what is done: a rerun resumes at this line
                        raise
                    skipped.append(number)
                if len(pending) == encoder.batch_size:
                    flush(k + 1)
                bar.update(1)
            flush(len(numbered))
        out.finish()
    if skipped:
        skipped_path(output_path).write_text(json.dumps(skipped))
    else:
        skipped_path(output_path).unlink(missing_ok=True)
    took = time.perf_counter() - start
    blank = sum(1 for _, line in numbered[done:] if not line.strip())
    encoded = len(numbered) - done - (len(skipped) - resumed_skipped) - blank
    return {
        "rows": len(numbered),
        "resumed_after": done,
        "encoded": encoded,
        "skipped": len(skipped),
        "skipped_lines": skipped[:20],
        "seconds": took,
        "images_per_s": encoded / took if took else 0.0,
    }


def skipped_path(output: Path) -> Path:
    """Where ``--skip_errors`` lists the input lines it skipped."""
    return output.with_name(output.name + ".skipped.json")


def _config_file(config: str | None) -> Path | None:
    return Path(config) if config and config.endswith(".json") else None


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
        "--mode",
        choices=[m for m in PP_MODES if m != "augment"],
        default="resize",
        help="resize (LAPA's pre-tokenisation) or center_crop (for models trained with augmentation)",
    )
    parser.add_argument("--skip_errors", action="store_true")
    parser.add_argument(
        "--restart", action="store_true", help="discard a leftover partial output instead of resuming it"
    )
    parser.add_argument("--image_root", type=Path, default=None, help="base for relative image paths")
    parser.add_argument(
        "--shard",
        type=parse_shard,
        default=(0, 1),
        help="I/N: encode input lines I, I+N, ... (one shard per host)",
    )
    args = parser.parse_args(argv[1:])
    with exit_on():
        check_output_paths(
            {"--input": args.input, "--checkpoint": args.checkpoint, "--config": _config_file(args.config)},
            {
                "--output": args.output,
                **{f"--output's {kind}": path for kind, path in partial_paths(args.output).items()},
                "--output's skipped list": skipped_path(args.output),
            },
        )
        model = load_model(args.checkpoint, args.config)
        counts = encode_jsonl(
            model,
            args.input,
            args.output,
            args.batch_size,
            args.mode,
            args.skip_errors,
            args.image_root,
            args.shard,
            model_source={"checkpoint": fingerprint(args.checkpoint)},
            restart=args.restart,
        )
    print(
        f"wrote {args.output}: {counts['encoded']} rows encoded"
        + (f" (resumed after {counts['resumed_after']})" if counts["resumed_after"] else "")
        + (f", {counts['skipped']} skipped (lines {counts['skipped_lines']})" if counts["skipped"] else "")
        + f", {counts['images_per_s']:.1f} images/s"
    )
