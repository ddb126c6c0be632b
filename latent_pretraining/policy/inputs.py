"""The input flags of the inference CLI and the server's client: ``--image`` and ``--instruction``,
by default a built-in tabletop frame and its task. Light on purpose: a robot-side client that
imports this needs neither JAX nor the model."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

BUILT_IN_FRAME = Path(__file__).parents[1] / "assets" / "tabletop.png"  # sim.env seed 1000000, 64 px
BUILT_IN_INSTRUCTION = "go to the yellow triangle"  # that frame's task


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--image`` and ``--instruction``; both default to the built-in tabletop frame and its task."""
    parser.add_argument("--image", type=Path, default=None, help="default: a built-in tabletop frame")
    parser.add_argument("--instruction", default=None, help="the task description")


def input_from_arguments(args: argparse.Namespace) -> tuple[str, np.ndarray, str]:
    """``(image path, uint8 RGB image, instruction)``; an image needs its instruction."""
    if args.image is not None and args.instruction is None:
        raise ValueError("--instruction is required with --image")
    path = args.image or BUILT_IN_FRAME
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return str(path), pixels, BUILT_IN_INSTRUCTION if args.instruction is None else args.instruction
