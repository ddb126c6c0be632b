"""Times LAPA's own code beside ours at the same configuration and prints the ratio table.

    python benchmarks/peer/compare.py [--stages vla_24m,gen_latent,...] [--quick] [--json_out FILE]

Runs in our virtualenv. For every stage of ``stages.py`` it starts, alternating sides, separate
processes of ``lapa_side.py`` (in LAPA's virtualenv, see ``setup_lapa_env.sh``) and of
``ours_side.py`` (one per variant of ours), ``--processes`` of each (default 2; ``--quick``: 1,
with 2 timed repeats and 10,000 preprocess rows). Every process does its warm-up (compile) first
and reports the median of its timed repeats; the table shows the median over all timed repeats of
a side, then JSON lines (``stages.record`` schema plus ``process_medians_s``).

LAPA's side needs ``--lapa_venv`` (default ``$LAPA_VENV`` or ``.venv-lapa``) and the LAPA and tux
checkouts (``--lapa_src`` / ``--tux_src``, default ``$LAPA_SRC`` / ``$TUX_SRC`` or what
``setup_lapa_env.sh`` recorded in the venv). Without it only our side runs (``--ours_only``).

Both sides run on the CPU. A shared machine skews the numbers (torch's OpenMP threads suffer most):
``--wait_idle SECONDS`` waits before each process until other work leaves the CPUs, each record
carries ``others_cpu``, the cores other processes kept busy while it ran, and ``--max_others X``
reruns (``--retries`` times) a process during which that exceeded X.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT / "benchmarks")]

import stages  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat), 0 where unknown."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(limit_s: float, threshold: float = 0.2) -> float:
    """Waits (up to ``limit_s``) until other work keeps less than ``threshold`` cores busy over 2 s;
    returns the last such reading."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = cpu_busy_s()
        time.sleep(2.0)
        others = (cpu_busy_s() - busy) / 2.0
        if others < threshold or time.monotonic() > deadline:
            return others
        print(f"#   waiting: other work keeps {others:.1f} cores busy", file=sys.stderr, flush=True)
        time.sleep(8.0)


def recorded_sources(venv: Path) -> dict[str, str]:
    path = venv / "lapa_sources.env"
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def write_preprocess_input(path: Path, rows: int) -> None:
    from bench_finetune_preprocess import generated_rows  # the rows bench_finetune_preprocess.py times

    path.write_text(json.dumps(generated_rows(rows)))


def run_side(command: list[str], env: dict[str, str], timeout: float, log) -> list[dict]:
    """Runs one side's process; its JSON lines, or SystemExit with the tail of its output."""
    busy, own, t0 = cpu_busy_s(), children_cpu_s(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    wall = time.monotonic() - t0
    others = max(0.0, (cpu_busy_s() - busy) - (children_cpu_s() - own)) / wall
    log.write(f"$ {' '.join(command)}\n{done.stderr}\n")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not records:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{tail}")
    for r in records:
        r["others_cpu"] = round(others, 2)  # cores kept busy by other processes while this one ran
    return records


def summarize(records: list[dict]) -> dict:
    """One record of the shared schema over a side's processes (all timed repeats pooled)."""
    times = [t for r in records for t in r["times_s"]]
    firsts = [r["first_s"] for r in records if r.get("first_s") is not None]
    first = records[0]
    line = stages.record(
        first["side"],
        first["stage"],
        times,
        first["config"],
        variant=first["variant"],
        processes=len(records),
        process_medians_s=[r["median_s"] for r in records],
        first_s=statistics.median(firsts) if firsts else None,
        first_s_all=firsts,
        others_cpu_max=max(r.get("others_cpu", 0.0) for r in records),
        **{k: first[k] for k in ("params", "versions") if k in first},
    )
    return json.loads(line)


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 1.0 else f"{1e3 * seconds:.1f} ms"


def print_table(summary: dict[tuple[str, str, str], dict], header: str) -> None:
    print(header)
    rows = [("stage (same configuration on both sides)", "LAPA", "ours", "speed-up (LAPA / ours)")]
    for label, stage, variant, field in stages.ROWS:
        lapa = summary.get(("lapa", stage, "lapa"))
        ours = summary.get(("ours", stage, variant))
        if lapa is None and ours is None:
            continue
        a = None if lapa is None else lapa[field]
        b = None if ours is None else ours[field]
        ratio = f"{a / b:.2f}x" if a and b else "-"
        rows.append((label, fmt(a), fmt(b), ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--stages", default=",".join(stages.STAGES), help=f"comma-separated, of {list(stages.STAGES)}"
    )
    p.add_argument(
        "--quick", action="store_true", help="1 process per side, 2 repeats, 10,000 preprocess rows"
    )
    p.add_argument("--processes", type=int, default=None, help="processes per side and variant (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per process (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first repeats per process (default 1)")
    p.add_argument("--lapa_venv", default=os.environ.get("LAPA_VENV", str(ROOT / ".venv-lapa")))
    p.add_argument("--lapa_src", default=os.environ.get("LAPA_SRC", ""))
    p.add_argument("--tux_src", default=os.environ.get("TUX_SRC", ""))
    p.add_argument("--ours_python", default=sys.executable)
    p.add_argument("--ours_only", action="store_true", help="skip LAPA's side")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per side process")
    p.add_argument(
        "--wait_idle",
        type=float,
        default=0.0,
        help="before each process, wait up to this many seconds for other work to leave the CPUs",
    )
    p.add_argument(
        "--max_others",
        type=float,
        default=0.0,
        help="rerun a process (up to --retries times) when other work kept more cores busy (0: never)",
    )
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--json_out", default="", help="also write every process's JSON line here")
    p.add_argument("--log", default="", help="the sides' stderr (default: a temp file, named at the end)")
    args = p.parse_args()

    mode = stages.TIMING["quick" if args.quick else "full"]
    processes = args.processes or mode["processes"]
    repeats = args.repeats or mode["repeats"]
    warmup = mode["warmup"] if args.warmup is None else args.warmup
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(names) - set(stages.STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {list(stages.STAGES)}")

    venv = Path(args.lapa_venv)
    lapa_python = venv / "bin" / "python"
    sources = recorded_sources(venv)
    lapa_src = args.lapa_src or sources.get("LAPA_SRC", "")
    tux_src = args.tux_src or sources.get("TUX_SRC", "")
    with_lapa = not args.ours_only
    if with_lapa and not (lapa_python.exists() and lapa_src and tux_src):
        p.error(
            f"LAPA's side needs {lapa_python} (bash benchmarks/peer/setup_lapa_env.sh) and "
            "--lapa_src/--tux_src; or pass --ours_only"
        )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # each side sets up its own imports
    timing = ["--warmup", str(warmup), "--repeats", str(repeats)] + (["--quick"] if args.quick else [])
    log_path = (
        Path(args.log) if args.log else Path(tempfile.mkstemp(prefix="peer_compare_", suffix=".log")[1])
    )
    raw: list[dict] = []
    started = datetime.datetime.now().astimezone()
    load_before = load_average()

    with tempfile.TemporaryDirectory() as tmp, open(log_path, "a") as log:
        for name in names:
            stage = stages.STAGES[name]
            extra: list[str] = []
            if stage["kind"] == "preprocess":
                rows = stages.stage_config(name, args.quick)["rows"]
                input_path = Path(tmp) / f"finetune_{rows}.json"
                write_preprocess_input(input_path, rows)
                extra = ["--input", str(input_path)]
            lapa_cmd = [str(lapa_python), str(HERE / "lapa_side.py"), "--stage", name]
            lapa_cmd += ["--lapa_src", lapa_src, "--tux_src", tux_src, *timing, *extra]
            ours_cmds = [
                [
                    args.ours_python,
                    str(HERE / "ours_side.py"),
                    "--stage",
                    name,
                    "--variant",
                    v,
                    *timing,
                    *extra,
                ]
                for v in stage["ours"]
            ]
            for round_ in range(processes):
                order = ([lapa_cmd] if with_lapa else []) + ours_cmds
                if round_ % 2:
                    order.reverse()  # alternate which side runs first
                for command in order:
                    side = "lapa" if command is lapa_cmd else "ours"
                    print(f"# {name}: {side} process {round_ + 1}/{processes}", file=sys.stderr, flush=True)
                    for attempt in range(args.retries + 1):
                        if args.wait_idle > 0:
                            wait_for_idle(args.wait_idle)
                        records = run_side(command, env, args.timeout, log)
                        for r in records:
                            got = f"median {fmt(r['median_s'])}, first {fmt(r['first_s'])}"
                            got += f", others' cores {r['others_cpu']}"
                            print(f"#   {r['side']} {r['variant']}: {got}", file=sys.stderr, flush=True)
                        busy = max(r["others_cpu"] for r in records)
                        if not args.max_others or busy <= args.max_others or attempt == args.retries:
                            break
                        print(
                            f"#   discarded (others kept {busy} cores busy); again",
                            file=sys.stderr,
                            flush=True,
                        )
                    raw.extend(records)

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in raw:
        groups.setdefault((r["side"], r["stage"], r["variant"]), []).append(r)
    summary = {key: summarize(records) for key, records in groups.items()}
    versions = {
        side: next((s["versions"] for k, s in summary.items() if k[0] == side), {})
        for side in ("lapa", "ours")
    }
    worst = max((r.get("others_cpu", 0.0) for r in raw), default=0.0)
    header = (
        f"# {started:%Y-%m-%d %H:%M %Z}, {cpu_model()} ({os.cpu_count()} CPUs), "
        f"{processes} process(es) per side x {repeats} timed repeats after {warmup} warm-up, "
        f"load average {load_before} at the start, {load_average()} at the end; other processes kept up to "
        f"{worst:.2f} cores busy during a measured process\n"
        f"# lapa: {json.dumps(versions['lapa'])}\n# ours: {json.dumps(versions['ours'])}"
    )
    print()
    print_table(summary, header)
    print()
    for record in summary.values():
        print(json.dumps(record))
    if args.json_out:
        with open(args.json_out, "w") as out:
            for r in raw:
                out.write(json.dumps(r) + "\n")
    print(f"# sides' stderr: {log_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
