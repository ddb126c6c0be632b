"""Command-line plumbing shared by the tools: ``--shard I/N`` and one-line error exits."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

# errors that a bad input or option raises: a command prints their message, not a traceback
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n: this job handles every n-th row from the i-th."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n with 0 <= i < n")
    return i, n


@contextlib.contextmanager
def exit_on(*errors: type[BaseException]) -> Iterator[None]:
    """Turns the given errors (default ``INPUT_ERRORS``) into ``SystemExit("error: <message>")``:
    the message names the file and row; the traceback would bury it."""
    caught = errors or INPUT_ERRORS
    try:
        yield
    except caught as e:
        raise SystemExit(f"error: {e}") from None
