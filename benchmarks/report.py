"""Prints benchmark results: a table of the chosen columns, then every row as a JSON line."""

from __future__ import annotations

import json
from collections.abc import Sequence


def print_report(rows: Sequence[dict], cols: Sequence[str]) -> None:
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    for r in rows:
        print(json.dumps(r))
