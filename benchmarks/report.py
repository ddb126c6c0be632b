"""Shared by the benchmark scripts: the results report, model overrides from the command line and
the tabletop export they train on."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from data.make_tabletop import make_dataset
from sim.env import EnvConfig


def tabletop_export(out: Path, episodes: int, image_size: int, seed: int = 0, noise: float = 0.1) -> Path:
    """A tabletop export of ``episodes`` expert episodes under ``out`` (written once per setting)."""
    export = Path(out) / f"tabletop_{episodes}ep_{image_size}px_seed{seed}_noise{noise:g}"
    if not (export / "videos" / "index.json").is_file():
        make_dataset(
            export, episodes, EnvConfig(image_size=image_size), seed=seed, noise=noise, formats=("videos",)
        )
    return export


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model key=value`` (repeatable), for :func:`override_model`."""
    parser.add_argument(
        "--model", action="append", default=[], help="model config override key=value (repeatable)"
    )


def override_model(model: ml_collections.ConfigDict, items: Sequence[str]) -> None:
    """Applies ``key=value`` items: values as JSON (``motion_kernel=7``, ``difference_embedding=true``),
    or the text itself for a text field (``code_head=max``)."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in model:
            raise SystemExit(f"--model {item!r}: expected key=value with a key of the model config")
        if key.startswith("quantizer"):
            reason = "the quantizer comes with its options; choose it by run or preset"
            raise SystemExit(f"--model {item!r}: {reason}")
        try:
            model[key] = json.loads(value)
        except json.JSONDecodeError as e:
            if not isinstance(model[key], str):
                raise SystemExit(f"--model {item!r}: {e}") from None
            model[key] = value
        except TypeError as e:
            raise SystemExit(f"--model {item!r}: {e}") from None


def print_report(rows: Sequence[dict], cols: Sequence[str]) -> None:
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    for r in rows:
        print(json.dumps(r))
