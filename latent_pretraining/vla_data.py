"""JSONL training data for the VLA: validated examples, padded or packed rows, per-host batches.

Reads LAPA's latent-pretraining rows (``vision``, ``delta``, ``instruction``, ``fields``)
and finetune rows (``vision`` and/or ``image``, ``action``, ``instruction``, ``fields``).
Rows without ``vision`` tokens are encoded by a VQGAN on the fly (with the training
augmentation when asked). A bad row raises an error naming the file and line, or is
skipped and counted with ``skip_invalid``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_pretraining.core.files import resolve_under
from latent_pretraining.sequences import Example, RowError, SequenceBuilder
from latent_pretraining.training.data import BatchStream

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedData:
    examples: list[Example]
    rows: list[dict[str, Any]]  # the source rows (for evaluation: raw actions, ids)
    skipped: list[str]  # "file:line: reason" of rows left out
    from_images: set[int] = dataclasses.field(default_factory=set)  # examples whose vision the VQGAN made
    labels: list[str] = dataclasses.field(default_factory=list)  # "file:line" of each example


def load_examples(
    paths: Sequence[str | os.PathLike],
    builder: SequenceBuilder,
    max_length: int,
    skip_invalid: bool = False,
    vision_encoder: Callable[[list[dict[str, Any]], list[str]], list[list[int] | RowError]] | None = None,
) -> LoadedData:
    """Reads, validates and tokenises every row; errors name ``file:line``."""
    examples, rows, skipped, labels = [], [], [], []
    encoded: set[int] = set()
    pending: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "invalid JSON"
                    if not skip_invalid:
                        raise RowError(f"{where}: {reason}: {e}") from None
                    skipped.append(f"{where}: {reason}")
                    continue
                pending.append((where, row))
    if vision_encoder is not None:
        need = [(w, r) for w, r in pending if _needs_vision(r)]
        if need:
            codes = vision_encoder([r for _, r in need], [w for w, _ in need])
            for (where, row), row_codes in zip(need, codes, strict=True):
                if isinstance(row_codes, RowError):  # unreadable image
                    if not skip_invalid:
                        raise row_codes
                    skipped.append(str(row_codes))
                    pending.remove((where, row))
                else:
                    row["vision"] = row_codes
                    encoded.add(id(row))
    for where, row in pending:
        try:
            example = builder(row)
            if len(example) - 1 > max_length:
                raise RowError(f"{len(example)} tokens do not fit max_length {max_length} (+1 for the shift)")
        except RowError as e:
            if not skip_invalid:
                raise RowError(f"{where}: {e}") from None
            skipped.append(f"{where}: {e}")
            continue
        examples.append(example)
        rows.append(row)
        labels.append(where)
    if skipped:
        log.warning("skipped %d invalid rows, e.g. %s", len(skipped), skipped[0])
    if not examples:
        raise RowError(f"no usable rows in {', '.join(map(str, paths))}")
    from_images = {i for i, row in enumerate(rows) if id(row) in encoded}
    return LoadedData(examples, rows, skipped, from_images, labels)


def _needs_vision(row: Any) -> bool:
    if not isinstance(row, dict) or "vision" in row:
        return False
    return "vision" in str(row.get("fields", "")) and "image" in row


def pack(lengths: Sequence[int], max_length: int, seed: int) -> list[list[int]]:
    """Greedy first-fit packing of examples (in a seeded order) into rows of ``max_length``
    input tokens (an example of n tokens takes n - 1 inputs)."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    rows: list[list[int]] = []
    space: list[int] = []
    for i in order:
        need = lengths[i] - 1
        for r, free in enumerate(space):
            if free >= need:
                rows[r].append(int(i))
                space[r] -= need
                break
        else:
            rows.append([int(i)])
            space.append(max_length - need)
    return rows


def make_rows(examples: list[Example], max_length: int, packing: bool, seed: int) -> list[list[int]]:
    if not packing:
        return [[i] for i in range(len(examples))]
    return pack([len(e) for e in examples], max_length, seed)


def collate(examples: Sequence[Sequence[Example]], max_length: int) -> dict[str, np.ndarray]:
    """Rows of (possibly packed) examples -> arrays [B, max_length].

    ``inputs``/``modality`` feed the model; ``targets``/``target_modality``/``target_weight``
    are the next tokens and their loss weights; ``segment_ids`` (0 = padding) and
    ``positions`` restart for every packed example.
    """
    b = len(examples)
    out = {
        k: np.zeros((b, max_length), np.int32)
        for k in ("inputs", "modality", "targets", "target_modality", "segment_ids", "positions")
    }
    out["target_weight"] = np.zeros((b, max_length), np.float32)
    for r, row in enumerate(examples):
        start = 0
        for segment, ex in enumerate(row, start=1):
            n = len(ex) - 1
            sl = slice(start, start + n)
            out["inputs"][r, sl] = ex.ids[:-1]
            out["modality"][r, sl] = ex.modality[:-1]
            out["targets"][r, sl] = ex.ids[1:]
            out["target_modality"][r, sl] = ex.modality[1:]
            out["target_weight"][r, sl] = ex.loss_mask[1:]
            out["segment_ids"][r, sl] = segment
            out["positions"][r, sl] = np.arange(n)
            start += n
    return out


def batch_stream(
    data: LoadedData,
    batch_size: int,
    max_length: int,
    packing: bool,
    seed: int,
    refresh: Callable[[list[int], int], dict[int, Example]] | None = None,
) -> BatchStream:
    """Per-host, shuffled, resumable batches of ``batch_size`` rows (this host's share).

    ``refresh(example_indices, epoch)`` rebuilds examples whose vision tokens come from
    images, e.g. with a new draw of the training augmentation every epoch."""
    rows = make_rows(data.examples, max_length, packing, seed)

    def make_batch(indices: np.ndarray, epoch: int, index: int) -> dict[str, np.ndarray]:
        wanted = [i for j in indices for i in rows[int(j)]]
        fresh = refresh([i for i in wanted if i in data.from_images], epoch) if refresh else {}
        pick = lambda i: fresh.get(i, data.examples[i])  # noqa: E731
        batch = collate([[pick(i) for i in rows[int(j)]] for j in indices], max_length)
        # index of each row's first example in ``data.rows`` (host-side bookkeeping for evaluation)
        batch["example"] = np.asarray([rows[int(j)][0] for j in indices], np.int32)
        return batch

    return BatchStream(len(rows), batch_size, make_batch, seed=seed)


def augmenting_refresh(
    data: LoadedData, builder: SequenceBuilder, encoder: Callable, seed: int
) -> Callable[[list[int], int], dict[int, Example]]:
    """Rebuilds image-derived examples with a new draw of the augmentation each epoch
    (deterministic in the seed, the epoch and the examples)."""

    def refresh(indices: list[int], epoch: int) -> dict[int, Example]:
        if not indices:
            return {}
        rng = np.random.default_rng([seed, epoch, *indices])
        rows = [{k: v for k, v in data.rows[i].items() if k != "vision"} for i in indices]
        codes = encoder(rows, [data.labels[i] for i in indices], rng)
        out = {}
        for i, row, c in zip(indices, rows, codes, strict=True):
            if isinstance(c, RowError):
                raise c
            out[i] = builder({**row, "vision": c})
        return out

    return refresh


def vqgan_encoder(
    checkpoint: str | os.PathLike,
    config: str | None,
    augment: bool,
    seed: int,
    image_root: str | os.PathLike | None = None,
) -> Callable[[list[dict], list[str]], list[list[int]]]:
    """Encodes rows' ``image`` files with a VQGAN, with the training augmentation when
    ``augment`` (drawn from ``rng`` when given). Relative paths join ``image_root`` and may
    not leave it."""
    from latent_pretraining.vqgan.encode import Encoder, load_model
    from latent_pretraining.vqgan.images import load_image, preprocess

    model = load_model(Path(checkpoint), config)
    encoder = Encoder(model, batch_size=32)
    default_rng = np.random.default_rng(seed)

    def encode(rows: list[dict], labels: list[str], rng: np.random.Generator | None = None) -> list:
        """Codes per row, or the RowError of a row whose image cannot be read."""
        rng = default_rng if rng is None else rng
        images, out = [], []
        for row, where in zip(rows, labels, strict=True):
            try:
                if not isinstance(row["image"], str):
                    raise RowError(f"{where}: field 'image': expected a path string, got {row['image']!r}")
                path = resolve_under(row["image"], None if image_root is None else Path(image_root), where)
            except ValueError as e:
                out.append(RowError(str(e)))
                continue
            try:
                images.append(preprocess(load_image(path), encoder.resolution, train=augment, rng=rng))
                out.append(None)
            except Exception as e:
                out.append(RowError(f"{where}: cannot read image {path}: {e}"))
        codes: list[list[int]] = []
        for start in range(0, len(images), encoder.batch_size):
            codes.extend(c.tolist() for c in encoder(np.stack(images[start : start + encoder.batch_size])))
        it = iter(codes)
        return [next(it) if o is None else o for o in out]

    return encode
