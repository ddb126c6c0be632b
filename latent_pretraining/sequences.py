"""Token sequences built exactly as LAPA builds them from JSONL rows.

A row's ``fields`` is a comma-separated list; a name in brackets carries no loss.
A name containing ``vision`` is image tokens, ``delta`` latent actions, ``action``
action bins; anything else is text (``a+b`` joins fields with a space). Layout:

    [BOS] text(instruction) text("<vision>") V.. 8193 text("</vision>")
          text("<delta>") d0..d3 text("</delta>") [EOS]

Each marker string is its own tokenizer call (so each gets SentencePiece's leading
``▁``); 8192 ends a frame inside a multi-frame span and 8193 ends the vision span. The
BOS has no loss; the EOS always has loss.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from latent_pretraining.model import END_OF_FRAME, END_OF_VISION, Modality

MARKERS = ("<vision>", "</vision>", "<delta>", "</delta>", "<action>", "</action>")  # each its own call


class TextTokenizer:
    """The LLaMA SentencePiece tokenizer read from a ``tokenizer.model`` path (no BOS/EOS added)."""

    def __init__(self, path: str | os.PathLike):
        import sentencepiece

        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer model {path} does not exist")
        self.sp = sentencepiece.SentencePieceProcessor(model_file=os.fspath(path))
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.vocab_size = self.sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))


class RowError(ValueError):
    """A JSONL row that cannot be turned into a training example."""


@dataclasses.dataclass
class Example:
    ids: np.ndarray  # int32 [T]
    modality: np.ndarray  # int32 [T] (Modality values)
    loss_mask: np.ndarray  # float32 [T]: 1 where the token is a training target

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    tokens_per_frame: int = 256  # vision tokens per image (16x16 for LWM's VQGAN)
    tokens_per_latent: int = 4  # LAPA: 4 latent codes of a codebook of 8
    tokens_per_action: int = 7
    vocab_sizes: tuple[int, int, int, int] = (32000, 8448, 8, 256)  # text, vision, latent, action
    vision_codes: int = END_OF_FRAME  # the VQGAN's codebook size: image codes are below it
    action_bins: tuple[int, ...] = ()  # bins per action dimension (from the bins CSV), if known


class SequenceBuilder:
    """Turns rows into ``Example``s; errors name the field and what was expected."""

    def __init__(self, tokenizer: TextTokenizer, config: SequenceConfig = SequenceConfig()):
        self.tokenizer, self.config = tokenizer, config
        self.markers = {name: tokenizer.encode(name) for name in MARKERS}

    def __call__(self, row: dict[str, Any]) -> Example:
        if not isinstance(row, dict):
            raise RowError(f"expected a JSON object, got {type(row).__name__}")
        if "fields" not in row:
            raise RowError("missing field 'fields'")
        ids: list[int] = [self.tokenizer.bos_id]
        mods: list[int] = [Modality.TEXT]
        loss: list[float] = [0.0]

        def add(tokens: Sequence[int], modality: Modality, weight: float) -> None:
            ids.extend(int(t) for t in tokens)
            mods.extend([int(modality)] * len(tokens))
            loss.extend([weight] * len(tokens))

        for raw in str(row["fields"]).split(","):
            name = raw.strip()
            weight = 1.0
            if name.startswith("[") and name.endswith("]"):
                name, weight = name[1:-1], 0.0
            if name == "<|bos|>":
                add([self.tokenizer.bos_id], Modality.TEXT, weight)
            elif name == "<|eos|>":
                add([self.tokenizer.eos_id], Modality.TEXT, weight)
            elif "vision" in name:
                add(self.markers["<vision>"], Modality.TEXT, weight)
                add(self._vision(row, name), Modality.VISION, weight)
                add(self.markers["</vision>"], Modality.TEXT, weight)
            elif "delta" in name or "action" in name:
                tag, modality, count = (
                    ("delta", Modality.LATENT, self.config.tokens_per_latent)
                    if "delta" in name
                    else ("action", Modality.ACTION, self.config.tokens_per_action)
                )
                add(self.markers[f"<{tag}>"], Modality.TEXT, weight)
                add(self._codes(row, name, count, modality), modality, weight)
                add(self.markers[f"</{tag}>"], Modality.TEXT, weight)
            else:
                parts = name.split("+")
                missing = [p for p in parts if p not in row]
                if missing:
                    raise RowError(f"missing field {missing[0]!r} (named in fields)")
                add(self.tokenizer.encode(" ".join(str(row[p]) for p in parts)), Modality.TEXT, weight)
        add([self.tokenizer.eos_id], Modality.TEXT, 1.0)
        return Example(np.asarray(ids, np.int32), np.asarray(mods, np.int32), np.asarray(loss, np.float32))

    def _vision(self, row: dict[str, Any], name: str) -> list[int]:
        if self.config.vocab_sizes[Modality.VISION] <= END_OF_VISION:
            raise RowError(
                f"field {name!r}: the vision vocabulary ({self.config.vocab_sizes[Modality.VISION]}) "
                f"has no end-of-vision id {END_OF_VISION}"
            )
        tokens = self._codes(row, name, None, Modality.VISION)
        codes = min(self.config.vision_codes, END_OF_FRAME)
        bad = [t for t in tokens if t >= codes]
        if bad:
            raise RowError(
                f"field {name!r}: id {bad[0]} is not an image code (the VQGAN's codes are 0..{codes - 1}; "
                f"the frame markers {END_OF_FRAME}/{END_OF_VISION} are added by the builder)"
            )
        per = self.config.tokens_per_frame
        if not tokens or len(tokens) % per:
            raise RowError(f"field {name!r}: {len(tokens)} vision tokens, expected a multiple of {per}")
        frames = len(tokens) // per
        out: list[int] = []
        for f in range(frames):
            out.extend(tokens[f * per : (f + 1) * per])
            out.append(END_OF_VISION if f == frames - 1 else END_OF_FRAME)
        return out

    def _codes(self, row: dict[str, Any], name: str, count: int | None, modality: Modality) -> list[int]:
        if name not in row:
            raise RowError(f"missing field {name!r}")
        values = row[name]
        if not isinstance(values, list):
            raise RowError(f"field {name!r}: expected a list of ids, got {type(values).__name__}")
        codes = [_as_id(v) for v in values]
        if None in codes:
            bad = values[codes.index(None)]
            raise RowError(f"field {name!r}: ids must be integers, got {bad!r} in {values[:8]}")
        if count is not None and len(codes) != count:
            raise RowError(f"field {name!r}: {len(codes)} ids, expected {count}")
        size = self.config.vocab_sizes[int(modality)]
        bad = [c for c in codes if not 0 <= c < size]
        if bad:
            raise RowError(
                f"field {name!r}: id {bad[0]} is outside the {modality.name.lower()} vocabulary [0, {size})"
            )
        if modality == Modality.ACTION and self.config.action_bins:
            for d, (c, n) in enumerate(zip(codes, self.config.action_bins, strict=True)):
                if c >= n:
                    raise RowError(f"field {name!r}: dimension {d} has id {c} but its bins are 0..{n - 1}")
        return codes


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _as_id(value: Any) -> int | None:
    """An integer id from an int, an integral float (3.0) or an integer string ("3", as LAPA
    writes latent codes); None for anything else (3.7, "3.7", true), never a truncation."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    return None
