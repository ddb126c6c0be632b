"""Finetune preprocessing speed: the whole command, end to end, and the binning alone.

    python benchmarks/bench_finetune_preprocess.py [--rows 100000] [--bins 256] [--repeats 3]
        [--lapa_algorithm]   # also time the re-implementation of LAPA's binning (needs pandas)

Whole process: ``python -m data.finetune_preprocess`` as a subprocess on a generated JSON file
(interpreter start, imports, reading and checking the JSON, binning, writing the JSONL, the bins
CSV and the metadata), timed from outside; the median of ``--repeats`` runs, wall clock and the
child's CPU time (user + system). Twice: as installed (orjson reads the JSON when it is there)
and with orjson hidden (the standard library's ``json`` alone); the two runs' outputs must be
byte for byte the same.

Binning only: ``preprocess()`` in this process on rows already parsed (no JSON reading or
writing), the median of ``--repeats`` runs. With ``--lapa_algorithm``, beside it a
re-implementation of the algorithm of LAPA's ``data/finetune_preprocess.py``, step for step (a
Python list per action dimension, ``pandas.qcut(..., duplicates='drop')`` per dimension, a
Python loop over every value that scans the bin edges, ``int()`` for the gripper): not LAPA's
code, and no JSON either. Comparing the whole of LAPA's script with ours is the peer harness's
job (``benchmarks/peer/``).

Prints a table and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.finetune_preprocess import preprocess

REPO_ROOT = Path(__file__).resolve().parent.parent
HIDE_ORJSON = (
    "import runpy, sys; sys.modules['orjson'] = None; "
    "runpy.run_module('data.finetune_preprocess', run_name='__main__', alter_sys=True)"
)


def generated_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    actions = rng.normal(0.0, 0.01, size=(n, 7))
    actions[:, 3] = np.round(actions[:, 3], 3)  # repeated values, as in real data
    actions[:, 6] = rng.integers(0, 2, n)
    return [
        {
            "id": f"ep{i // 100}_{i % 100}",
            "image": f"images/{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat action should the robot take to `x`"},
                {"from": "gpt", "raw_actions": a.tolist()},
            ],
        }
        for i, a in enumerate(actions)
    ]


def lapa_algorithm(rows: list[dict], bins: int) -> list[list[int]]:
    """A re-implementation of LAPA's binning, step for step (not LAPA's code)."""
    import pandas as pd

    def assign_bin(value, edges):
        for i in range(len(edges) - 1):
            if edges[i] <= value < edges[i + 1]:
                return i
        if value >= edges[len(edges) - 1]:
            return len(edges) - 2
        if value <= edges[0]:
            return 0
        return None

    columns = [[] for _ in range(7)]
    for row in rows:
        action = [float(v) for v in row["conversations"][1]["raw_actions"]]
        for d in range(7):
            columns[d].append(action[d])
    edges = [pd.qcut(pd.Series(c), bins, labels=False, retbins=True, duplicates="drop")[1] for c in columns]
    out = []
    for row in rows:
        action = [float(v) for v in row["conversations"][1]["raw_actions"]]
        ids = [assign_bin(action[d], edges[d]) for d in range(6)]
        ids.append(int(action[6]))
        out.append(ids)
    return out


def whole_process(folder: Path, bins: int, repeats: int, hide_orjson: bool) -> dict:
    """Median wall and CPU seconds of the command on ``folder/in.json``, and its JSONL bytes."""
    tag = "json" if hide_orjson else "orjson"
    command = [sys.executable, *(["-c", HIDE_ORJSON] if hide_orjson else ["-m", "data.finetune_preprocess"])]
    command += ["--input_path", str(folder / "in.json"), "--discretize_bins", str(bins)]
    command += ["--output_filename", str(folder / f"{tag}.jsonl")]
    command += ["--csv_filename", str(folder / f"{tag}.csv")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        outputs = [folder / f"{tag}{suffix}" for suffix in (".jsonl", ".csv", ".json")]
        written = [p.read_bytes() for p in outputs]
        for p in outputs:  # each run writes new files, as a user's does (no old output to replace)
            p.unlink()
    return {"wall": walls, "cpu": cpus, "outputs": written}


def timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bins", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measure (the median is shown)")
    parser.add_argument(
        "--lapa_algorithm", action="store_true", help="also time the re-implementation of LAPA's binning"
    )
    parser.add_argument("--lapa_repeats", type=int, default=1, help="its runs (about 40 s each at 100k)")
    args = parser.parse_args()
    if args.lapa_algorithm:
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise SystemExit("LAPA's algorithm (re-implemented) needs pandas: pip install pandas") from None
    rows = generated_rows(args.rows)
    base = {"rows": args.rows, "bins": args.bins}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in.json").write_text(json.dumps(rows))
        runs = {hide: whole_process(folder, args.bins, args.repeats, hide) for hide in (False, True)}
    if runs[False]["outputs"] != runs[True]["outputs"]:
        raise SystemExit("the outputs read with orjson and with json differ")
    for hide, label in ((False, "ours, orjson"), (True, "ours, json only")):
        results.append(
            {
                "measure": "whole_process",
                "impl": label,
                **base,
                "seconds": statistics.median(runs[hide]["wall"]),
                "cpu_seconds": statistics.median(runs[hide]["cpu"]),
                "runs": runs[hide]["wall"],
            }
        )
    ours = timed(lambda: preprocess(rows, args.bins), args.repeats)
    results.append(
        {"measure": "binning_only", "impl": "ours, preprocess()", **base, "seconds": statistics.median(ours)}
    )
    if args.lapa_algorithm:
        lapa = timed(lambda: lapa_algorithm(rows, args.bins), args.lapa_repeats)
        results.append(
            {
                "measure": "binning_only",
                "impl": "LAPA's algorithm, re-implemented",
                **base,
                "seconds": statistics.median(lapa),
                "speedup_of_ours": statistics.median(lapa) / statistics.median(ours),
            }
        )
    print(f"{'measure':<15}{'implementation':<34}{'rows':>9}{'seconds':>10}{'cpu s':>8}")
    for r in results:
        cpu = f"{r['cpu_seconds']:>8.2f}" if "cpu_seconds" in r else f"{'':>8}"
        print(f"{r['measure']:<15}{r['impl']:<34}{r['rows']:>9}{r['seconds']:>10.2f}{cpu}")
    if args.lapa_algorithm:
        print(f"binning only: ours is {results[-1]['speedup_of_ours']:.1f}x the re-implementation of LAPA's")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
