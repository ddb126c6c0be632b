"""JSONL rows read with errors that name the file and line, for the tools that read pipeline outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_jsonl_lines(path: Path) -> Iterator[tuple[int, str, dict]]:
    """``(line number, line, row)`` for each non-blank line of a JSONL file, the line as written
    (for tools that copy rows unchanged); a line that is not a JSON object is a ValueError naming
    ``path:line``."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, line, row


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for each non-blank line of a JSONL file (see ``read_jsonl_lines``)."""
    for number, _, row in read_jsonl_lines(path):
        yield number, row
