"""JSONL training data for the VLA: validated examples, padded or packed rows, per-host batches.

Reads LAPA's latent-pretraining rows (``vision``, ``delta``, ``instruction``, ``fields``)
and finetune rows (``vision`` and/or ``image``, ``action``, ``instruction``, ``fields``).
Rows without ``vision`` tokens are encoded by a VQGAN on the fly, in the preprocessing
mode of their split (training rows may be augmented; held-out rows never are). A bad row
raises an error naming the file and line, or is skipped and counted with ``skip_invalid``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from latent_pretraining.core.batches import BatchStream
from latent_pretraining.sequences import Example, RowError, SequenceBuilder
from latent_pretraining.vqgan.encode import RowEncoder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedData:
    examples: list[Example]
    rows: list[dict[str, Any]]  # the source rows (for evaluation: raw actions, ids)
    skipped: list[str]  # "file:line: reason" of rows left out
    from_images: set[int] = dataclasses.field(default_factory=set)  # examples whose vision the VQGAN made
    labels: list[str] = dataclasses.field(default_factory=list)  # "file:line" of each example


@dataclasses.dataclass(frozen=True)
class ImageTokens:
    """How rows without ``vision`` tokens get them: a VQGAN row encoder and a named
    preprocessing mode (``augment`` draws are seeded by ``seed`` and the call's key)."""

    encoder: RowEncoder
    mode: str = "resize"
    seed: int = 0

    def encode(
        self, rows: list[dict[str, Any]], labels: list[str], key: Sequence[int] = ()
    ) -> tuple[dict[int, list[int]], dict[int, Exception]]:
        rng = np.random.default_rng([self.seed, *key]) if self.mode == "augment" else None
        return self.encoder(rows, labels, self.mode, rng)


def load_examples(
    paths: Sequence[str | os.PathLike],
    builder: SequenceBuilder,
    max_length: int,
    skip_invalid: bool = False,
    images: ImageTokens | None = None,
) -> LoadedData:
    """Reads, validates and tokenises every row; errors name ``file:line``. Rows with an
    ``image`` but no ``vision`` get their tokens from ``images``."""
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
    need = [(w, r) for w, r in pending if _needs_vision(r)] if images is not None else []
    if need:
        codes, failures = images.encode([r for _, r in need], [w for w, _ in need])
        for k, (where, row) in enumerate(need):
            if k in failures:  # unreadable image
                if not skip_invalid:
                    raise RowError(str(failures[k])) from None
                skipped.append(str(failures[k]))
                pending.remove((where, row))
            else:
                row["vision"] = codes[k]
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
        return collate([[pick(i) for i in rows[int(j)]] for j in indices], max_length)

    return BatchStream(len(rows), batch_size, make_batch, seed=seed)


def eval_batches(
    data: LoadedData, batch_size: int, max_length: int
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """One deterministic pass over every held-out example: this host's share (every
    process_count-th from its index), ``batch_size`` rows a batch, the last one padded with empty
    rows (segment id 0, no loss). Every host yields the same number of batches. Yields the arrays
    and, kept apart from them, each row's example index (-1 for padding)."""
    hosts, host = jax.process_count(), jax.process_index()
    share = list(range(host, len(data.examples), hosts))
    steps = math.ceil(math.ceil(len(data.examples) / hosts) / batch_size)
    for s in range(steps):
        chunk = share[s * batch_size : (s + 1) * batch_size]
        padding = batch_size - len(chunk)
        rows = [[data.examples[i]] for i in chunk] + [[] for _ in range(padding)]
        yield collate(rows, max_length), np.asarray(chunk + [-1] * padding, np.int32)


def augmenting_refresh(
    data: LoadedData, builder: SequenceBuilder, images: ImageTokens
) -> Callable[[list[int], int], dict[int, Example]]:
    """Rebuilds image-derived examples with a new draw of the augmentation each epoch
    (deterministic in the seed, the epoch and the examples)."""

    def refresh(indices: list[int], epoch: int) -> dict[int, Example]:
        if not indices:
            return {}
        rows = [{k: v for k, v in data.rows[i].items() if k != "vision"} for i in indices]
        codes, failures = images.encode(rows, [data.labels[i] for i in indices], [epoch, *indices])
        if failures:
            raise RowError(str(next(iter(failures.values()))))
        return {
            i: builder({**row, "vision": codes[k]})
            for k, (i, row) in enumerate(zip(indices, rows, strict=True))
        }

    return refresh
