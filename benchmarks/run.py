"""Run every benchmark in ``benchmarks/`` in turn (``make bench``).

    .venv/bin/python -m benchmarks.run            # the full runs (tens of minutes)
    .venv/bin/python -m benchmarks.run --quick    # small runs, a few minutes
    .venv/bin/python -m benchmarks.run --only feature_store

Each ``bench_*.py`` module runs in its own process (``python -m benchmarks.<name>``),
one after the other so they do not compete for the CPUs, with the arguments below;
its output goes to the console and to ``benchmarks/results/<name>.log``, and what it
writes itself lands in ``benchmarks/results/`` too. A failing benchmark does not stop
the others; the exit status says whether all succeeded, and ``results/run.md`` lists
each with its status and duration. A ``bench_*.py`` not listed below runs without
arguments.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> (full arguments, quick arguments); "{results}" is the results folder
ARGUMENTS: dict[str, tuple[list[str], list[str]]] = {
    "bench_simulator": (
        [],
        ["--cards", "2000", "--terminals", "800", "--days", "10", "--repeat", "1"],
    ),
    "bench_feature_store": (["--out", "{results}"], ["--quick", "--out", "{results}"]),
    "bench_decision_step": (["--out", "{results}"], ["--quick", "--out", "{results}"]),
    "bench_layers": (
        ["--json", "{results}/layers.json"],
        ["--data", "synthetic", "--batches", "20", "--epochs", "3",
         "--json", "{results}/layers.json"],
    ),
    "bench_end_to_end": (
        ["--out", "{results}"],
        ["--quick", "--workers", "1,2", "--out", "{results}"],
    ),
    "bench_profile": (["--out", "{results}"], ["--quick", "--out", "{results}"]),
    "bench_detection": (["--out", "{results}"], ["--quick", "--out", "{results}"]),
}  # fmt: skip
ORDER = (
    "bench_simulator",
    "bench_feature_store",
    "bench_layers",
    "bench_decision_step",
    "bench_end_to_end",
    "bench_profile",
    "bench_detection",
)


def benchmarks() -> list[str]:
    found = {p.stem for p in HERE.glob("bench_*.py")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def run_one(name: str, quick: bool, results: Path) -> tuple[int, float]:
    full, short = ARGUMENTS.get(name, ([], []))
    args = [a.replace("{results}", str(results)) for a in (short if quick else full)]
    command = [sys.executable, "-u", "-m", f"benchmarks.{name}", *args]
    print(f"\n=== {name}: {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    with (results / f"{name.removeprefix('bench_')}.log").open("w") as log:
        proc = subprocess.Popen(
            command,
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    return code, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs")
    parser.add_argument("--only", nargs="+", help="benchmarks to run (with or without bench_)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = benchmarks()
    if args.only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        names = [n for n in names if n in wanted]
    args.results.mkdir(parents=True, exist_ok=True)

    rows = []
    for name in names:
        code, seconds = run_one(name, args.quick, args.results)
        rows.append((name, code, seconds))
        print(f"=== {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {seconds:.0f} s")

    summary = [
        f"# Benchmarks {'(quick) ' if args.quick else ''}{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "| benchmark | status | seconds | output |",
        "|---|---|---:|---|",
        *(
            f"| {n} | {'ok' if c == 0 else f'failed ({c})'} | {s:.0f} "
            f"| {n.removeprefix('bench_')}.log |"
            for n, c, s in rows
        ),
        "",
    ]
    (args.results / "run.md").write_text("\n".join(summary))
    print("\n" + "\n".join(summary))
    return 0 if all(c == 0 for _, c, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
