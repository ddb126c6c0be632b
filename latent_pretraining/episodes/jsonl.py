"""LAPA-style JSONL, one row per frame with its image path."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_pretraining.core.files import resolve_under
from latent_pretraining.episodes.base import Episode, file_loader


@dataclass
class _Row:
    line: int
    image: str
    t: int | None
    instruction: str
    action: list[float] | None


def jsonl_frames(
    path: str | Path, fps: float | None = None, check_files: bool = True, image_root: str | Path | None = None
) -> list[Episode]:
    """LAPA-style JSONL, one row per frame: ``image`` (path; relative paths are resolved against
    the JSONL's folder and may not leave ``image_root``, default that folder), optional ``episode_id``
    (default: the image's parent folder), ``t`` (default: order of appearance in its episode),
    ``instruction`` and ``raw_actions`` or ``action`` (floats; ``raw_actions`` wins, since
    LAPA's finetune rows put bin ids in ``action``).

    Rows are grouped by episode and ordered by t; frame k of an episode is its k-th smallest t.
    The instruction is the first non-empty one in that order. Actions must be given on every
    frame, on all but the last, or on none. ``check_files`` checks that every image exists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {path} does not exist")
    groups: dict[str, list[_Row]] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if raw.strip():
                episode_id, row = _parse_row(
                    raw, f"{path}:{line_no}", path.parent, line_no, check_files, image_root
                )
                groups.setdefault(episode_id, []).append(row)
    if not groups:
        raise ValueError(f"{path} has no rows")
    return [_jsonl_episode(path, episode_id, rows, fps) for episode_id, rows in groups.items()]


def _parse_row(
    raw: bytes, where: str, base: Path, line_no: int, check_files: bool, within: str | Path | None
) -> tuple[str, _Row]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    image = row.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: field 'image': expected a path string, got {image!r}")
    image_path = resolve_under(image, base, where, explicit_root=False, within=within)
    if check_files and not image_path.is_file():
        raise FileNotFoundError(f"{where}: field 'image': image {image_path} does not exist")
    episode_id = row.get("episode_id", str(image_path.parent))
    if not isinstance(episode_id, str | int) or isinstance(episode_id, bool):
        raise ValueError(f"{where}: field 'episode_id': expected a string or integer, got {episode_id!r}")
    t = row.get("t")
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
        raise ValueError(f"{where}: field 't': expected an integer >= 0, got {t!r}")
    instruction = row.get("instruction", "")
    if not isinstance(instruction, str):
        raise ValueError(f"{where}: field 'instruction': expected a string, got {instruction!r}")
    key = "raw_actions" if "raw_actions" in row else "action"
    action = row.get(key)
    if action is not None and (
        not isinstance(action, list)
        or not action
        or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in action)
    ):
        raise ValueError(f"{where}: field {key!r}: expected a non-empty list of numbers, got {action!r}")
    return str(episode_id), _Row(line_no, str(image_path), t, instruction, action)


def _jsonl_episode(path: Path, episode_id: str, rows: list[_Row], fps: float | None) -> Episode:
    for k, row in enumerate(rows):
        row.t = k if row.t is None else row.t
    rows.sort(key=lambda r: r.t)
    for a, b in itertools.pairwise(rows):
        if a.t == b.t:
            raise ValueError(f"{path}:{b.line}: episode {episode_id!r} already has t={b.t} (line {a.line})")
    has = [r.action is not None for r in rows]
    actions = None
    if any(has):
        given = rows if all(has) else rows[:-1]
        missing = next((r for r in given if r.action is None), None)
        if missing is not None:
            raise ValueError(
                f"{path}:{missing.line}: episode {episode_id!r} has actions on some frames but none on "
                f"frame t={missing.t} (actions go on every frame, or on all but the last)"
            )
        dims = len(given[0].action)
        bad = next((r for r in given if len(r.action) != dims), None)
        if bad is not None:
            raise ValueError(f"{path}:{bad.line}: action has {len(bad.action)} values, episode has {dims}")
        actions = np.asarray([r.action for r in given], np.float64)
    paths = [r.image for r in rows]
    instruction = next((r.instruction for r in rows if r.instruction), "")
    return Episode(episode_id, len(rows), instruction, file_loader(paths), paths, actions, fps)
