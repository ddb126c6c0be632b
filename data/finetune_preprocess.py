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
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from latent_pretraining.actions.bins import GRIPPER_CONVENTIONS, ActionBins
from latent_pretraining.actions.spec import ACTION_DIMS, ACTION_NAMES
from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.files import check_output_paths, write_together
from latent_pretraining.prompts import ACTION_FIELDS, wrap_question

VERSION = 1
FIELDS = ACTION_FIELDS
IMAGE_TAG = "<image>\n"


class InvalidRowError(ValueError):
    """A finetune row that cannot be used."""


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


def _value_errors(rows: list[dict], actions: np.ndarray, convention: str) -> list[tuple[int, str]]:
    """Rows with NaN/inf actions or a gripper outside its convention (vectorised checks)."""
    lo, hi = GRIPPER_CONVENTIONS[convention]
    finite = np.isfinite(actions)
    gripper_ok = (actions[:, -1] >= lo) & (actions[:, -1] <= hi)
    errors = []
    for i in np.flatnonzero(~finite.all(axis=1) | ~gripper_ok):
        where = f"row {rows[i]['_index']} (id {rows[i]['row']['id']})"
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


def preprocess(
    rows: list[Any],
    num_bins: int = 256,
    scheme: str = "quantile",
    gripper_convention: str = "01",
    gripper_threshold: float | None = None,
    skip_invalid: bool = False,
) -> tuple[list[dict], ActionBins, dict]:
    """Rows of LAPA's finetune JSON -> (JSONL rows, bins, metadata). Raises InvalidRowError."""
    skipped: list[str] = []
    kept = []
    for index, row in enumerate(rows):
        problem = _structure_error(row, index)
        if problem is None:
            kept.append({"_index": index, "row": row})
        elif not skip_invalid:
            raise InvalidRowError(problem)
        else:
            skipped.append(problem)
    actions = np.array([k["row"]["conversations"][1]["raw_actions"] for k in kept], np.float64)
    actions = actions.reshape(len(kept), ACTION_DIMS)
    errors = _value_errors(kept, actions, gripper_convention)
    if errors:
        if not skip_invalid:
            raise InvalidRowError(errors[0][1])
        skipped.extend(message for _, message in errors)
        bad = {i for i, _ in errors}
        keep = np.array([i not in bad for i in range(len(kept))], bool)
        kept = [k for k, ok in zip(kept, keep, strict=True) if ok]
        actions = actions[keep]
    if not kept:
        raise InvalidRowError("no valid rows")
    bins = ActionBins.fit(actions, num_bins, scheme, gripper_convention)
    if gripper_threshold is None:
        lo, hi = GRIPPER_CONVENTIONS[gripper_convention]
        gripper_threshold = (lo + hi) / 2.0
    ids, clipped = bins.encode(actions, gripper_threshold)
    error = np.abs(bins.decode(ids) - actions)
    out = []
    for k, row_ids in zip(kept, ids.tolist(), strict=True):
        record = dict(k["row"])
        convo = record.pop("conversations")
        record["raw_actions"] = convo[1]["raw_actions"]
        record["action"] = row_ids
        record["fields"] = FIELDS
        record["instruction"] = wrap_question(str(convo[0]["value"]).replace(IMAGE_TAG, ""))
        out.append(record)
    metadata = {
        "version": VERSION,
        "scheme": scheme,
        "bins_requested": num_bins,
        "bins_per_dimension": dict(zip(ACTION_NAMES, bins.num_bins, strict=True)),
        "edge_convention": "[edge[i], edge[i+1]), the last bin closed; values outside go to the end bins",
        "decode": "(edge[i] + edge[i+1]) / 2",
        "gripper": {"convention": gripper_convention, "threshold": gripper_threshold},
        "rows": len(out),
        "skipped_rows": skipped,
        "statistics": {
            dim: {
                "min": float(actions[:, d].min()),
                "max": float(actions[:, d].max()),
                "mean": float(actions[:, d].mean()),
                "std": float(actions[:, d].std()),
                "q01": float(np.quantile(actions[:, d], 0.01)),
                "q99": float(np.quantile(actions[:, d], 0.99)),
                "clipped_fraction": float(clipped[:, d].mean()),
                "round_trip_mean_abs_error": float(error[:, d].mean()),
                "round_trip_max_abs_error": float(error[:, d].max()),
            }
            for d, dim in enumerate(ACTION_NAMES)
        },
    }
    return out, bins, metadata


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


def main(argv: list[str] | None = None) -> None:
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
        _run(args)


def _run(args: argparse.Namespace) -> None:
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
    try:
        rows = json.loads(args.input_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SystemExit(f"{args.input_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"{args.input_path}: unreadable JSON: {e}") from None
    if not isinstance(rows, list):
        raise SystemExit(f"{args.input_path}: expected a JSON array of rows, got {type(rows).__name__}")
    if not rows:
        raise SystemExit(f"{args.input_path}: the array holds no rows; nothing was written")
    try:
        out, bins, metadata = preprocess(
            rows,
            args.discretize_bins,
            args.binning,
            args.gripper_convention,
            args.gripper_threshold,
            args.skip_invalid,
        )
        if args.vqgan_checkpoint is not None:
            add_vision(
                out, metadata, args.vqgan_checkpoint, args.vqgan_config, args.image_root, args.skip_invalid
            )
    except InvalidRowError as e:
        raise SystemExit(
            f"{args.input_path}: {e}; nothing was written (--skip_invalid skips such rows)"
        ) from None
    write_together(
        [
            (args.output_filename, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in out))),
            (args.csv_filename, bins.to_csv),
            (metadata_path, lambda p: p.write_text(json.dumps(metadata, indent=2))),
        ]
    )
    took = time.perf_counter() - start
    print(
        f"wrote {len(out)} rows to {args.output_filename}, bins to {args.csv_filename}, "
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


if __name__ == "__main__":
    main()
