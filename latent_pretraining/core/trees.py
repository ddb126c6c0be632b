"""Nested JSON dicts as flat ``{"a.b": leaf}`` maps: for config listings and comparisons."""

from __future__ import annotations

from typing import Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for a nested dict (``{prefix: tree}`` for a leaf); keys joined with dots."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    joined = lambda key: f"{prefix}.{key}" if prefix else str(key)  # noqa: E731
    return {k: v for key, value in tree.items() for k, v in flatten(value, joined(key)).items()}
