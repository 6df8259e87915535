"""Throughput of the transaction simulator: generate() and the wire encoders.

    .venv/bin/python benchmarks/bench_simulator.py [--cards 20000 --days 25 --repeat 3]

Prints transactions per second (best of ``--repeat`` runs) for ``generate`` (all frames:
transactions, labels, settlements) and for ``to_json_lines`` / ``to_transactions`` on
the first 100,000 rows and on all of them. The requirement is >= 100,000 tx/s generated.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from fraudstream.simulator import SimulatorConfig, generate, to_json_lines, to_transactions
from fraudstream.wire import transaction_decoder


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--terminals", type=int, default=8_000)
    parser.add_argument("--days", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    cfg = SimulatorConfig(seed=1, n_cards=args.cards, n_terminals=args.terminals, days=args.days)
    seconds, data = best_of(args.repeat, lambda: generate(cfg))
    tx = data.transactions
    n = len(tx)
    print(
        f"generate: {n:,} transactions ({len(data.settlements):,} settlements, "
        f"{len(data.labels):,} labels) in {seconds:.2f} s -> {n / seconds:,.0f} tx/s"
    )

    for label, frame in (("100k rows", tx.iloc[:100_000]), (f"{n:,} rows", tx)):
        rows = len(frame)
        seconds, lines = best_of(args.repeat, partial(to_json_lines, frame))
        size = sum(map(len, lines)) / rows
        print(
            f"to_json_lines ({label}): {seconds:.2f} s -> {rows / seconds:,.0f} rows/s, "
            f"{size:.0f} bytes/row"
        )
        seconds, _ = best_of(args.repeat, partial(to_transactions, frame))
        print(f"to_transactions ({label}): {seconds:.2f} s -> {rows / seconds:,.0f} rows/s")

    lines = to_json_lines(tx.iloc[:100_000])
    seconds, batch = best_of(args.repeat, lambda: transaction_decoder(64 * 1024).decode(lines))
    assert not batch.rejected, batch.rejected[:3]
    print(f"wire decode check (100k rows): all decode, {len(lines) / seconds:,.0f} rows/s")


if __name__ == "__main__":
    main()
