"""LAPA's finetune preprocessing, vectorised and validated.

    python -m data.finetune_preprocess --input_path finetune.json --output_filename finetune.jsonl \\
        --csv_filename bins.csv [--discretize_bins 256] [--binning quantile|uniform]

Same command line and outputs as LAPA's ``data/finetune_preprocess.py``: JSONL rows
``{..., "raw_actions", "action", "fields": "[instruction],[vision],action", "instruction":
"<s> You are a helpful assistant. USER: <question> ASSISTANT:"}`` and a bins CSV (one row
of edges per dimension). Unlike LAPA's script: no per-value Python loop, bins that never
silently disappear (see ``latent_pretraining/actions/bins.py``), a thresholded gripper, and
validation that names the row id and field; nothing is written unless every row is valid
(or ``--skip_invalid``, which lists what it skipped). A metadata JSON beside the CSV
records the scheme, bin counts, statistics and per-dimension round-trip error.

No output may be an input or another output (checked before anything is read), and the
three outputs are replaced together or not at all: a failure leaves the previous ones.

Speed (``benchmarks/bench_finetune_preprocess.py`` times the whole command): orjson reads the
input when it is installed (else json; json also reads again whatever orjson could have read
differently, and any file with an invalid row, so every result and message is json's); a valid
file is checked a column at a time; the JSONL is written 2,048 rows at a time, each line joined
from its row's fields and the numbers as one orjson call writes them (as ``repr`` does but for a
few rows, which take ``repr``): byte for byte what ``json.dumps`` writes. The cyclic garbage
collector is paused meanwhile, and the command exits without freeing its rows one by one.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import mmap
import os
import sys
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from pathlib import Path
from typing import Any

# the command multiplies no matrices: OpenBLAS need not start (and spin) its threads at numpy's import
if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from latent_pretraining.actions.bins import GRIPPER_CONVENTIONS, ActionBins
from latent_pretraining.actions.spec import ACTION_DIMS, ACTION_NAMES
from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.files import check_output_paths, write_together
from latent_pretraining.prompts import ACTION_FIELDS, wrap_question

try:
    import orjson
except ImportError:  # optional: json reads the same rows, slower
    orjson = None

VERSION = 1
FIELDS = ACTION_FIELDS
IMAGE_TAG = "<image>\n"
ADDED_KEYS = ("raw_actions", "action", "fields", "instruction")  # what each output row gains, in order
# orjson reads an integer outside int64/uint64 as a float; json keeps it exact
ORJSON_EXACT_LIMIT = 2.0**63

_REQUIRED = {"id", "image", "conversations"}
_CONVERSATIONS = itemgetter("conversations")
_HUMAN, _GPT = itemgetter(0), itemgetter(1)
_VALUE, _RAW_ACTIONS = itemgetter("value"), itemgetter("raw_actions")
# what a line holds after the row's own fields, around its raw actions, ids and instruction
_TAIL = [
    ', "raw_actions": [',
    '], "action": [',
    f'], "fields": {encode_basestring_ascii(FIELDS)}, "instruction": ',
    "}\n",
]


class InvalidRowError(ValueError):
    """A finetune row that cannot be used."""


class _NeedsJsonError(Exception):
    """Rows read by orjson that only json's reading may serve: an invalid row (its message quotes
    the row; this includes a raw action that is not a number), or a value orjson may have read
    differently (an integer outside 64 bits). Raised before anything is written or, from the
    writing of the JSONL, before the outputs are in place."""


def _structure_error(row: Any, index: int) -> str | None:
    """The first structural problem of a row (missing keys, wrong action count), or None."""
    rid = row.get("id", f"#{index}") if isinstance(row, dict) else f"#{index}"
    where = f"row {index} (id {rid})"
    if not isinstance(row, dict):
        return f"{where}: expected an object, got {type(row).__name__}"
    for key in ("id", "image", "conversations"):
        if key not in row:
            return f"{where}: missing field '{key}'"
    conv = row["conversations"]
    if not (
        isinstance(conv, list) and len(conv) >= 2 and isinstance(conv[0], dict) and isinstance(conv[1], dict)
    ):
        return f"{where}: 'conversations' must hold a human turn and a gpt turn"
    if "value" not in conv[0]:
        return f"{where}: missing field 'conversations[0].value'"
    if "raw_actions" not in conv[1]:
        return f"{where}: missing field 'conversations[1].raw_actions'"
    raw = conv[1]["raw_actions"]
    if not isinstance(raw, list) or len(raw) != ACTION_DIMS:
        size = len(raw) if isinstance(raw, list) else type(raw).__name__
        return f"{where}: 'raw_actions' has {size} values, expected {ACTION_DIMS}"
    for dim, value in zip(ACTION_NAMES, raw, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{where}: 'raw_actions' {dim} is {value!r}, expected a number"
    return None


def _plain_columns(rows: list[Any], check_numbers: bool = True) -> tuple[list, list, set] | None:
    """(questions, raw action lists, the layouts: the rows' keys in order) when every row is well
    formed with plain JSON types, as in a valid file, checked a column at a time (no per-row Python
    code); None when some row needs the per-row checks (``_structure_error``), which then name the
    first problem. Not ``check_numbers``: the caller checks that each raw action is an int or a
    float (the text orjson writes of them holds nothing else)."""
    try:
        if set(map(type, rows)) != {dict}:
            return None
        layouts = set(map(tuple, rows))
        if any(not set(layout) >= _REQUIRED for layout in layouts):
            return None
        conversations = list(map(_CONVERSATIONS, rows))
        if set(map(type, conversations)) != {list} or min(map(len, conversations)) < 2:
            return None
        human, gpt = list(map(_HUMAN, conversations)), list(map(_GPT, conversations))
        if set(map(type, human)) != {dict} or set(map(type, gpt)) != {dict}:
            return None
        questions, raws = list(map(_VALUE, human)), list(map(_RAW_ACTIONS, gpt))
    except KeyError:
        return None
    if set(map(type, raws)) != {list} or set(map(len, raws)) != {ACTION_DIMS}:
        return None
    if check_numbers and not set(map(type, chain.from_iterable(raws))) <= {float, int}:  # bool is neither
        return None
    return questions, raws, layouts


def _value_errors(
    rows: list[dict], keep: list[int], actions: np.ndarray, convention: str
) -> list[tuple[int, str]]:
    """Rows with NaN/inf actions or a gripper outside its convention (vectorised checks);
    ``actions[i]`` belongs to ``rows[keep[i]]``."""
    lo, hi = GRIPPER_CONVENTIONS[convention]
    finite = np.isfinite(actions)
    gripper_ok = (actions[:, -1] >= lo) & (actions[:, -1] <= hi)
    errors = []
    for i in np.flatnonzero(~finite.all(axis=1) | ~gripper_ok):
        where = f"row {keep[i]} (id {rows[keep[i]]['id']})"
        if not finite[i].all():
            d = int(np.flatnonzero(~finite[i])[0])
            errors.append((i, f"{where}: 'raw_actions' {ACTION_NAMES[d]} is {actions[i, d]} (NaN/inf)"))
        else:
            errors.append(
                (
                    i,
                    f"{where}: gripper {actions[i, -1]} is outside the '{convention}' convention "
                    f"[{lo}, {hi}]",
                )
            )
    return errors


class _Prepared:
    """The valid rows (``rows[keep[i]]``) with their questions, raw actions and bin ids."""

    def __init__(
        self,
        rows: list[Any],
        keep: list[int],
        questions: list[Any],
        raws: list[list],
        actions: np.ndarray,
        bins: ActionBins,
        ids: np.ndarray,
        metadata: dict,
        plain_numbers: bool,
        layouts: set[tuple] | None,
    ):
        self.rows, self.keep, self.questions, self.raws = rows, keep, questions, raws
        self.actions, self.bins, self.ids, self.metadata = actions, bins, ids, metadata
        self.plain_numbers = plain_numbers  # every raw action an exact float or int (and finite)
        self.layouts = layouts  # the kept rows' keys, in order, or more (None: not known yet)


def preprocess(
    rows: list[Any],
    num_bins: int = 256,
    scheme: str = "quantile",
    gripper_convention: str = "01",
    gripper_threshold: float | None = None,
    skip_invalid: bool = False,
) -> tuple[list[dict], ActionBins, dict]:
    """Rows of LAPA's finetune JSON -> (JSONL rows, bins, metadata). Raises InvalidRowError."""
    with _collector_paused():
        p = _prepare(rows, num_bins, scheme, gripper_convention, gripper_threshold, skip_invalid)
        return _records(p), p.bins, p.metadata


def _prepare(
    rows: list[Any],
    num_bins: int,
    scheme: str,
    gripper_convention: str,
    gripper_threshold: float | None,
    skip_invalid: bool,
    from_orjson: bool = False,
) -> _Prepared:
    """``preprocess`` without building the output rows. ``from_orjson``: raise
    ``_NeedsJsonError`` instead of naming or skipping an invalid row (``_jsonl_chunks`` checks
    the types of the raw actions)."""
    skipped: list[str] = []
    columns = _plain_columns(rows, check_numbers=not from_orjson)
    if columns is not None:
        keep = list(range(len(rows)))
        questions, raws, layouts = columns
    elif from_orjson:
        raise _NeedsJsonError
    else:
        keep, layouts = [], None
        for index, row in enumerate(rows):
            problem = _structure_error(row, index)
            if problem is None:
                keep.append(index)
            elif not skip_invalid:
                raise InvalidRowError(problem)
            else:
                skipped.append(problem)
        questions = [rows[i]["conversations"][0]["value"] for i in keep]
        raws = [rows[i]["conversations"][1]["raw_actions"] for i in keep]
    try:
        actions = np.fromiter(chain.from_iterable(raws), np.float64, len(raws) * ACTION_DIMS)
    except (TypeError, ValueError):  # a raw action that is not a number (not checked yet)
        if from_orjson:
            raise _NeedsJsonError from None
        raise
    actions = actions.reshape(len(raws), ACTION_DIMS)
    errors = _value_errors(rows, keep, actions, gripper_convention)
    if errors:
        if from_orjson:
            raise _NeedsJsonError
        if not skip_invalid:
            raise InvalidRowError(errors[0][1])
        skipped.extend(message for _, message in errors)
        bad = {i for i, _ in errors}
        mask = np.array([i not in bad for i in range(len(keep))], bool)
        keep = [k for k, ok in zip(keep, mask, strict=True) if ok]
        questions = [q for q, ok in zip(questions, mask, strict=True) if ok]
        raws = [r for r, ok in zip(raws, mask, strict=True) if ok]
        actions = actions[mask]
    if not keep:
        raise InvalidRowError("no valid rows")
    if from_orjson and np.abs(actions).max() >= ORJSON_EXACT_LIMIT:
        raise _NeedsJsonError
    bins = ActionBins.fit(actions, num_bins, scheme, gripper_convention)
    if gripper_threshold is None:
        lo, hi = GRIPPER_CONVENTIONS[gripper_convention]
        gripper_threshold = (lo + hi) / 2.0
    ids, clipped = bins.encode(actions, gripper_threshold)
    error = np.abs(bins.decode(ids) - actions)
    metadata = {
        "version": VERSION,
        "scheme": scheme,
        "bins_requested": num_bins,
        "bins_per_dimension": dict(zip(ACTION_NAMES, bins.num_bins, strict=True)),
        "edge_convention": "[edge[i], edge[i+1]), the last bin closed; values outside go to the end bins",
        "decode": "(edge[i] + edge[i+1]) / 2",
        "gripper": {"convention": gripper_convention, "threshold": gripper_threshold},
        "rows": len(keep),
        "skipped_rows": skipped,
        "statistics": _statistics(actions, clipped, error),
    }
    plain = from_orjson or set(map(type, chain.from_iterable(raws))) <= {float, int}
    return _Prepared(rows, keep, questions, raws, actions, bins, ids, metadata, plain, layouts)


def _statistics(actions: np.ndarray, clipped: np.ndarray, error: np.ndarray) -> dict:
    """Per dimension: the range, moments and 1st/99th percentiles of the actions, the clipped
    fraction and the round-trip error (each dimension's values made contiguous first: faster, and
    the same numbers)."""
    out = {}
    for dim, x, c, e in zip(
        ACTION_NAMES, *(np.ascontiguousarray(a.T) for a in (actions, clipped, error)), strict=True
    ):
        q01, q99 = np.quantile(x, [0.01, 0.99])
        out[dim] = {
            "min": float(x.min()),
            "max": float(x.max()),
            "mean": float(x.mean()),
            "std": float(x.std()),
            "q01": float(q01),
            "q99": float(q99),
            "clipped_fraction": float(c.mean()),
            "round_trip_mean_abs_error": float(e.mean()),
            "round_trip_max_abs_error": float(e.max()),
        }
    return out


def _record(row: dict, row_ids: list[int]) -> dict:
    """One output row: the input row's fields less ``conversations``, then ``ADDED_KEYS``."""
    record = dict(row)
    convo = record.pop("conversations")
    record["raw_actions"] = convo[1]["raw_actions"]
    record["action"] = row_ids
    record["fields"] = FIELDS
    record["instruction"] = wrap_question(str(convo[0]["value"]).replace(IMAGE_TAG, ""))
    return record


def _records(p: _Prepared) -> list[dict]:
    return [_record(p.rows[index], row_ids) for index, row_ids in zip(p.keep, p.ids.tolist(), strict=True)]


def _template(layout: tuple) -> tuple[list[str], list[str]] | None:
    """The text of the JSON line of a row whose keys are ``layout`` around its values (one piece
    more than values), and the keys whose values it takes before the added ones; None for a layout
    it does not cover (a key that is not a string, or an added key already in the row, which then
    keeps its place)."""
    keys = [k for k in layout if k != "conversations"]
    if not keys or any(type(k) is not str or k in ADDED_KEYS for k in keys):
        return None
    labels = [encode_basestring_ascii(k) + ": " for k in keys]
    return ["{" + labels[0], *(", " + label for label in labels[1:]), *_TAIL], keys


def _has_big_float(value: Any) -> bool:
    """Whether a float that orjson may have read from an integer is in ``value``."""
    if type(value) is float:
        return abs(value) >= ORJSON_EXACT_LIMIT
    if type(value) is list:
        return any(map(_has_big_float, value))
    if type(value) is dict:
        return any(map(_has_big_float, value.values()))
    return False


def _encode_value(value: Any, from_orjson: bool) -> str:
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if from_orjson and _has_big_float(value):
        raise _NeedsJsonError
    return json.dumps(value)


def _encode_column(values: list, from_orjson: bool) -> list[str]:
    if set(map(type, values)) == {str}:
        return list(map(encode_basestring_ascii, values))
    return [_encode_value(v, from_orjson) for v in values]


def _instructions(questions: list, from_orjson: bool) -> list[str]:
    """The JSON of each row's ``instruction``, once per distinct question."""
    if set(map(type, questions)) == {str}:
        encoded = {
            q: encode_basestring_ascii(wrap_question(q.replace(IMAGE_TAG, ""))) for q in set(questions)
        }
        return list(map(encoded.__getitem__, questions))
    out = []
    for q in questions:
        if not isinstance(q, str) and from_orjson and _has_big_float(q):
            raise _NeedsJsonError
        out.append(encode_basestring_ascii(wrap_question(str(q).replace(IMAGE_TAG, ""))))
    return out


# orjson writes a float as repr does (shortest round trip, the same digits) but for |x| < 1e-4:
# 0.000012 and 1e-7 where repr writes 1.2e-05 and 1e-07; rows holding such values, or values of
# 1e16 or more (repr's exponent form), take repr
_REPR_BELOW, _REPR_FROM = 1e-4, 1e16


_NOT_NUMBERS = (b'"', b"t", b"f", b"n", b"{")  # what orjson writes of strings, true, false, null, dicts
# numbers of the range where orjson writes what repr writes: checked once a run, in case a release of
# orjson writes them otherwise (then str() writes them all)
_PROBE = [0.0, -0.0, 0.1, 1 / 3, 0.0001, 0.00012345, 0.30000000000000004, 5.0, 1234567.125, 1e15]
_PROBE += [9007199254740993.0, 9999999999999998.0, -0.015625, 0, 1, -7, 255, -(2**63), 2**64 - 1]
_orjson_as_repr: list[bool] = []


def _orjson_writes_repr() -> bool:
    if not _orjson_as_repr:
        _orjson_as_repr.append(orjson.dumps(_PROBE).decode() == str(_PROBE).replace(", ", ","))
    return _orjson_as_repr[0]


def _number_lists(
    lists: list[list] | np.ndarray, repr_rows: list[int] = (), check_types: bool = False
) -> list[str]:
    """``json.dumps(x)[1:-1]`` for each non-empty list ``x`` of exact ints and finite floats (an
    int array: its rows), from one orjson call; ``str(x)[1:-1]`` for the rows in ``repr_rows``.
    ``check_types``: raise ``_NeedsJsonError`` where a list holds something else."""
    if orjson is not None and _orjson_writes_repr():
        try:
            text = orjson.dumps(lists, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:  # an integer outside 64 bits, an array not in C order
            pass
        else:
            if check_types and any(map(text.__contains__, _NOT_NUMBERS)):
                raise _NeedsJsonError
            out = text.decode("ascii").replace(",", ", ").split("], [")
            out[0], out[-1] = out[0][2:], out[-1][:-2]
            for i in repr_rows:
                out[i] = str(lists[i])[1:-1]
            return out
    if isinstance(lists, np.ndarray):
        lists = lists.tolist()
    if check_types and not set(map(type, chain.from_iterable(lists))) <= {float, int}:
        raise _NeedsJsonError
    return [str(x)[1:-1] for x in lists]


def _layout_lines(
    layout: tuple,
    rows: list[dict],
    raws: list[str],
    ids: list[str],
    instructions: list[str],
    id_array: np.ndarray,
    from_orjson: bool,
) -> Iterator[tuple[str, ...]]:
    """The JSON lines of rows whose keys are ``layout``, from the JSON of their added values: for
    each row the pieces that joined make its line."""
    entry = _template(layout)
    if entry is None:
        records = [_record(row, row_ids) for row, row_ids in zip(rows, id_array.tolist(), strict=True)]
        if from_orjson and _has_big_float(records):
            raise _NeedsJsonError
        return ((json.dumps(record) + "\n",) for record in records)
    text, keys = entry
    values = [_encode_column(list(map(itemgetter(k), rows)), from_orjson) for k in keys]
    columns = [*values, raws, ids, instructions]
    interleaved = [part for i, column in enumerate(columns) for part in (repeat(text[i]), column)]
    return zip(*interleaved, repeat(text[-1]))


def _jsonl_chunks(p: _Prepared, from_orjson: bool = False, size: int = 2048) -> Iterator[str]:
    """``"".join(json.dumps(r) + "\\n" for r in _records(p))``, byte for byte, in pieces of ``size``
    rows (small enough to stay in the CPU caches, and the memory of one is reused by the next),
    without building the records: the rows of each layout (their keys, in order) fill its template
    a column at a time. ``from_orjson``: raise ``_NeedsJsonError`` at a raw action that is not a
    number (``_prepare`` left that check here), or at a written float that orjson may have read
    from an integer."""
    rows = p.rows if len(p.keep) == len(p.rows) else list(map(p.rows.__getitem__, p.keep))
    instructions = _instructions(p.questions, from_orjson)
    distinct = p.layouts if p.layouts is not None else set(map(tuple, rows))
    single = next(iter(distinct)) if len(distinct) == 1 else None  # as in a file one program wrote
    if p.plain_numbers:
        magnitude = np.abs(p.actions)
        odd = ((magnitude < _REPR_BELOW) & (magnitude != 0.0)) | (magnitude >= _REPR_FROM)
        repr_rows = np.flatnonzero(odd.any(axis=1)).tolist()
    for start in range(0, len(rows), size):
        stop = min(start + size, len(rows))
        if p.plain_numbers:
            first, last = bisect_left(repr_rows, start), bisect_left(repr_rows, stop)
            repr_here = [i - start for i in repr_rows[first:last]]
            raws = _number_lists(p.raws[start:stop], repr_here, check_types=from_orjson)
        else:
            raws = [json.dumps(raw)[1:-1] for raw in p.raws[start:stop]]
        piece = [rows[start:stop], raws, _number_lists(p.ids[start:stop]), instructions[start:stop]]
        layouts = None if single is not None else list(map(tuple, piece[0]))
        if single is not None or len(set(layouts)) == 1:
            lines = _layout_lines(single or layouts[0], *piece, p.ids[start:stop], from_orjson)
        else:
            groups: dict[tuple, list[int]] = {}
            for i, layout in enumerate(layouts):
                groups.setdefault(layout, []).append(i)
            lines = [()] * len(layouts)
            for layout, positions in groups.items():
                columns = ([column[i] for i in positions] for column in piece)
                group = _layout_lines(layout, *columns, p.ids[start:stop][positions], from_orjson)
                for i, line in zip(positions, group, strict=True):
                    lines[i] = line
        yield "".join(chain.from_iterable(lines))


def _write_ascii(path: Path, pieces: Iterable[str]) -> None:
    with open(path, "wb") as f:
        for piece in pieces:
            f.write(piece.encode("ascii"))


def add_vision(
    out: list[dict],
    metadata: dict,
    checkpoint: Path,
    config: str | None,
    image_root: Path | None,
    skip_invalid: bool,
) -> None:
    """Adds VQGAN codes (``vision``) to every row in place; an unreadable image is an
    InvalidRowError naming the row (or, with ``skip_invalid``, a skipped and listed row)."""
    from latent_pretraining.vqgan.encode import load_row_encoder

    encode = load_row_encoder(checkpoint, config, image_root)
    codes, failures = encode(out, [f"row id {r['id']}" for r in out])
    if failures and not skip_invalid:
        raise InvalidRowError(str(next(iter(failures.values()))))
    keep = []
    for k, row in enumerate(out):
        if k in failures:
            metadata["skipped_rows"].append(str(failures[k]))
            continue
        row["vision"] = codes[k]
        keep.append(row)
    out[:] = keep
    metadata["rows"] = len(out)
    metadata["vision_tokens_per_image"] = len(out[0]["vision"]) if out else 0


def _write_outputs(
    args: argparse.Namespace, metadata_path: Path, prepared: _Prepared, jsonl: Iterable[str]
) -> None:
    """The JSONL (its text in pieces), the bins CSV and the metadata, all together or none."""
    write_together(
        [
            (args.output_filename, lambda p: _write_ascii(p, jsonl)),
            (args.csv_filename, prepared.bins.to_csv),
            (metadata_path, lambda p: p.write_text(json.dumps(prepared.metadata, indent=2))),
        ]
    )


def _pipe_bytes(path: Path) -> bytes | None:
    """The bytes of an input that is not a regular file (a pipe can be read once; the rows may be
    read twice), else None."""
    return None if path.is_file() or not path.exists() or path.is_dir() else path.read_bytes()


def _orjson_file(path: Path) -> Any:
    """orjson's reading of a regular file, mapped rather than copied into memory."""
    with open(path, "rb") as f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file, or one that cannot be mapped
            return orjson.loads(f.read())
        with mapped, memoryview(mapped) as view:
            return orjson.loads(view)


def _read_rows(path: Path, orjson_first: bool = True, data: bytes | None = None) -> tuple[list, bool]:
    """The rows of the input file (its bytes: ``data`` where given), and whether orjson read them.
    orjson reads what json reads, faster, except what it refuses (NaN, Infinity, an overflowing
    number, a lone surrogate) and integers outside 64 bits (read as floats: see
    ``ORJSON_EXACT_LIMIT``). json reads again anything orjson refuses or that is not a non-empty
    array, so every message here is json's."""
    if orjson_first and orjson is not None:
        try:
            rows = _orjson_file(path) if data is None else orjson.loads(data)
        except orjson.JSONDecodeError:
            rows = None
        if type(rows) is list and rows:
            return rows, True
    try:
        if data is None:
            text = path.read_text(encoding="utf-8")
        else:  # as read_text decodes
            text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
        rows = json.loads(text)
    except UnicodeDecodeError as e:
        raise SystemExit(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: unreadable JSON: {e}") from None
    if not isinstance(rows, list):
        raise SystemExit(f"{path}: expected a JSON array of rows, got {type(rows).__name__}")
    if not rows:
        raise SystemExit(f"{path}: the array holds no rows; nothing was written")
    return rows, False


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: reading a large file makes millions of objects, none in
    a cycle, and the collector would pass over them again and again (about half the parse time).
    On the way out they join the oldest generation untraversed (``freeze`` then ``unfreeze``), or
    the first allocation after would pass over all of them at once (about a tenth of the run)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def main(argv: list[str] | None = None, exit_when_done: bool = False) -> None:
    """The command line. ``exit_when_done`` (``python -m``): once the outputs are written and the
    report printed, the process ends at once, without freeing its millions of row objects one by one
    (about a tenth of the run on 100,000 rows)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input_path", type=Path, required=True, help="LAPA's finetune JSON (an array of rows)"
    )
    parser.add_argument("--output_filename", type=Path, required=True, help="output JSONL")
    parser.add_argument("--csv_filename", type=Path, required=True, help="output bins CSV")
    parser.add_argument("--discretize_bins", type=int, default=256)
    parser.add_argument("--binning", choices=("quantile", "uniform"), default="quantile")
    parser.add_argument("--gripper_convention", choices=tuple(GRIPPER_CONVENTIONS), default="01")
    parser.add_argument("--gripper_threshold", type=float, default=None, help="default: midway")
    parser.add_argument("--skip_invalid", action="store_true")
    parser.add_argument("--metadata", type=Path, default=None, help="default: the CSV path with .json")
    parser.add_argument(
        "--vqgan_checkpoint",
        type=Path,
        default=None,
        help="also add 'vision' tokens (LWM's vqgan pickle; config beside it or --vqgan_config)",
    )
    parser.add_argument("--vqgan_config", default=None, help="lwm / small / tiny or a JSON file")
    parser.add_argument("--image_root", type=Path, default=None, help="base of relative image paths")
    args = parser.parse_args(argv)
    with exit_on():
        _run(args, exit_when_done)


def _run(args: argparse.Namespace, exit_when_done: bool = False) -> None:
    start = time.perf_counter()
    metadata_path = args.metadata or args.csv_filename.with_suffix(".json")
    vqgan_config = (
        Path(args.vqgan_config) if args.vqgan_config and args.vqgan_config.endswith(".json") else None
    )
    check_output_paths(
        {
            "--input_path": args.input_path,
            "--vqgan_checkpoint": args.vqgan_checkpoint,
            "--vqgan_config": vqgan_config,
        },
        {
            "--output_filename": args.output_filename,
            "--csv_filename": args.csv_filename,
            "--metadata": metadata_path,
        },
    )
    settings = (
        args.discretize_bins,
        args.binning,
        args.gripper_convention,
        args.gripper_threshold,
        args.skip_invalid,
    )
    try:
        with _collector_paused():
            # with --vqgan_checkpoint json reads: orjson's speed is nothing beside the encoder's
            piped = _pipe_bytes(args.input_path)
            rows, from_orjson = _read_rows(args.input_path, args.vqgan_checkpoint is None, piped)
            try:
                prepared = _prepare(rows, *settings, from_orjson=from_orjson)
                if args.vqgan_checkpoint is None:
                    _write_outputs(args, metadata_path, prepared, _jsonl_chunks(prepared, from_orjson))
            except _NeedsJsonError:  # nothing was written
                rows, _ = _read_rows(args.input_path, False, piped)
                prepared = _prepare(rows, *settings)
                _write_outputs(args, metadata_path, prepared, _jsonl_chunks(prepared))
            del rows
        metadata, rows_written = prepared.metadata, len(prepared.keep)
        if args.vqgan_checkpoint is not None:
            out = _records(prepared)
            add_vision(
                out, metadata, args.vqgan_checkpoint, args.vqgan_config, args.image_root, args.skip_invalid
            )
            _write_outputs(args, metadata_path, prepared, (json.dumps(r) + "\n" for r in out))
            rows_written = len(out)
    except InvalidRowError as e:
        raise SystemExit(
            f"{args.input_path}: {e}; nothing was written (--skip_invalid skips such rows)"
        ) from None
    took = time.perf_counter() - start
    print(
        f"wrote {rows_written} rows to {args.output_filename}, bins to {args.csv_filename}, "
        f"metadata to {metadata_path} in {took:.2f}s"
        + (
            f"; skipped {len(metadata['skipped_rows'])}: {metadata['skipped_rows'][:3]}"
            if metadata["skipped_rows"]
            else ""
        )
    )
    print(f"{'dim':<8}{'bins':>6}{'mean |err|':>12}{'max |err|':>12}{'clipped':>9}")
    for dim, s in metadata["statistics"].items():
        print(
            f"{dim:<8}{metadata['bins_per_dimension'][dim]:>6}{s['round_trip_mean_abs_error']:>12.2e}"
            f"{s['round_trip_max_abs_error']:>12.2e}{s['clipped_fraction']:>9.2%}"
        )
    if exit_when_done:  # the outputs are closed and in place; nothing else is pending
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(exit_when_done=True)
