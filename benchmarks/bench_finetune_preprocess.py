"""Finetune preprocessing speed: this project's vectorised preprocessing vs LAPA's algorithm.

    pip install pandas   # only the LAPA baseline needs it
    python benchmarks/bench_finetune_preprocess.py [--rows 100000] [--bins 256]

The baseline re-implements what LAPA's ``data/finetune_preprocess.py`` does, step for
step: a Python list per action dimension, ``pandas.qcut(..., duplicates='drop')`` per
dimension, then a Python loop over every value that scans the bin edges, and ``int()``
for the gripper. Both run on the same generated rows (JSON parsing and writing
excluded, the same for both). Prints a table and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from data.finetune_preprocess import preprocess


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


def lapa_baseline(rows: list[dict], bins: int) -> list[list[int]]:
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bins", type=int, default=256)
    args = parser.parse_args()
    rows = generated_rows(args.rows)
    t0 = time.perf_counter()
    preprocess(rows, args.bins)
    ours = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        lapa_baseline(rows, args.bins)
        lapa = time.perf_counter() - t0
    except ImportError:
        raise SystemExit("the LAPA baseline needs pandas: pip install pandas") from None
    results = [
        {"impl": "lapa_algorithm", "rows": args.rows, "bins": args.bins, "seconds": lapa},
        {"impl": "ours", "rows": args.rows, "bins": args.bins, "seconds": ours, "speedup": lapa / ours},
    ]
    print(f"{'implementation':<16}{'rows':>9}{'seconds':>10}{'speed-up':>10}")
    for r in results:
        print(f"{r['impl']:<16}{r['rows']:>9}{r['seconds']:>10.2f}{r.get('speedup', 1.0):>10.1f}")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
