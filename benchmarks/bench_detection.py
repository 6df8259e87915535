"""Detection quality, beside the published results: the handbook protocol and the
simulated attacks (``fraudstream evaluate``), with precision-recall curves.

    .venv/bin/python -m benchmarks.bench_detection --out benchmarks/results
    .venv/bin/python -m benchmarks.bench_detection --quick   # one fold, small training

Writes ``evaluation_handbook.md`` (the ablation beside the handbook's published table)
and ``evaluation_simulated.md`` (recall at 1 % FPR per attack pattern), each with its
``*_pr.png``. Without the handbook data (``data.handbook_path``) that half is skipped
with a message saying where to get it; the simulated half needs nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fraudstream.settings import load_settings

HERE = Path(__file__).resolve().parent
QUICK = ["--quick", "--n-folds", "1"]
QUICK_SIMULATION = ["--cards", "1000", "--terminals", "300"]


def evaluate(protocol: str, out: Path, extra: Sequence[str]) -> int:
    root = HERE.parent
    # Relative to the repository root (the command's working directory) when inside it,
    # so the report's "Command:" line reads the same on every clone.
    if out.resolve().is_relative_to(root):
        out = out.resolve().relative_to(root)
    command = [
        sys.executable, "-m", "fraudstream.cli", "evaluate", "--protocol", protocol,
        "--out", str(out), *extra,
    ]  # fmt: skip
    print("$ fraudstream " + " ".join(command[3:]), flush=True)
    return subprocess.call(command, cwd=HERE.parent)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one fold, small training")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    codes = []

    handbook = load_settings().data.handbook_path
    if handbook.is_file():
        codes.append(
            evaluate(
                "handbook",
                args.out / f"evaluation_handbook{suffix}.md",
                QUICK if args.quick else [],
            )
        )
    else:
        print(
            f"handbook data not found at {handbook}: skipped (it accompanies the "
            "Fraud-Detection-Handbook, repository Fraud-Detection-Handbook/"
            "simulated-data-raw; set data.handbook_path)"
        )
    codes.append(
        evaluate(
            "simulated",
            args.out / f"evaluation_simulated{suffix}.md",
            [*QUICK, *QUICK_SIMULATION] if args.quick else [],
        )
    )
    return max(codes)


if __name__ == "__main__":
    raise SystemExit(main())
