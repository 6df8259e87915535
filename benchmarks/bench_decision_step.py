"""The decision step alone, by part: what one micro-batch costs without Faust or Kafka.

    .venv/bin/python -m benchmarks.bench_decision_step            # ~1 minute
    .venv/bin/python -m benchmarks.bench_decision_step --quick

The worker's own decider (``streams.worker.build_scoring``: the engine at
``models.bundle_dir``, the Redis feature store and allow/deny lists of the dev stack)
decides the end-to-end bench's simulated stream in batches of each size, after a
warm-up that fills the feature windows. Each part is read from the engine's own
metrics (``fraudstream_feature_store_seconds``, ``fraudstream_layer_seconds``): the
feature lookup, each layer, and the rest of the step (stacking, reasons, decisions).
A straight line through the step's time per batch against the batch size splits it
into a fixed cost per batch and a cost per transaction: why latency at low rates, where
batches are small, is mostly the fixed part.

Compare with the end-to-end report: inside a worker the same step shares the
interpreter lock with Faust and the cores with Kafka and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from fraudstream.devstack.testing import shared_dev_stack
from fraudstream.metrics import EngineMetrics, PrometheusEngineHooks
from fraudstream.settings import load_settings
from fraudstream.wire import transaction_decoder

RESULTS = Path(__file__).resolve().parent / "results"
FEATURES = "features"


@dataclass
class StepCost:
    batch: int
    batches: int
    step_ms: float  # mean per batch
    parts_ms: dict[str, float]  # features, each layer, "rest": mean per batch


def fixed_and_per_transaction(costs: Sequence[StepCost]) -> tuple[float, float]:
    """Least-squares line of the step's time per batch against the batch size:
    (ms per batch, µs per transaction)."""
    sizes = np.array([c.batch for c in costs], dtype=np.float64)
    times = np.array([c.step_ms for c in costs], dtype=np.float64)
    slope, intercept = np.polyfit(sizes, times, 1)
    return float(intercept), float(slope * 1000.0)


def parts_from_samples(
    before: Mapping[str, float], after: Mapping[str, float], batches: int, step_ms: float
) -> dict[str, float]:
    """Mean ms per batch of each part between two readings of the summed seconds, and
    the rest of the step."""
    parts = {k: (after[k] - before.get(k, 0.0)) * 1000.0 / batches for k in after}
    parts["rest"] = step_ms - sum(parts.values())
    return parts


def _sums(registry: CollectorRegistry) -> dict[str, float]:
    """Seconds summed so far: the feature lookups, and each layer that has run."""
    sums = {FEATURES: registry.get_sample_value(
        "fraudstream_feature_store_seconds_sum", {"result": "ok"}) or 0.0}  # fmt: skip
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "fraudstream_layer_seconds_sum":
                sums[sample.labels["layer"]] = sample.value
    return sums


def report(costs: Sequence[StepCost], setup: str, out: Path) -> str:
    fixed_ms, per_tx_us = fixed_and_per_transaction(costs)
    names = sorted({k for c in costs for k in c.parts_ms if k != "rest"}, key=_part_order)
    lines = [
        "# The decision step alone",
        "",
        setup,
        "",
        "| batch | step ms | per transaction µs | "
        + " | ".join(f"{n} ms" for n in names)
        + " | rest ms |",
        "|---:|---:|---:|" + "---:|" * (len(names) + 1),
    ]
    for c in costs:
        cells = [f"{c.parts_ms.get(n, 0.0):.2f}" for n in names]
        lines.append(
            f"| {c.batch} | {c.step_ms:.2f} | {c.step_ms * 1000 / c.batch:.0f} | "
            + " | ".join(cells)
            + f" | {c.parts_ms['rest']:.2f} |"
        )
    lines += [
        "",
        f"A line through the step times: **{fixed_ms:.1f} ms per batch + "
        f"{per_tx_us:.0f} µs per transaction**.",
        "",
    ]
    text = "\n".join(lines)
    (out / "decision_step.md").write_text(text)
    summary = {"fixed_ms": fixed_ms, "per_transaction_us": per_tx_us}
    (out / "decision_step.json").write_text(
        json.dumps({"costs": [asdict(c) for c in costs], **summary}, indent=1)
    )
    return text


def _part_order(name: str) -> tuple[int, str]:
    return (0 if name == FEATURES else 1, name)


async def _measure(decider: object, transactions: Sequence[object], sizes: Sequence[int],
                   registry: CollectorRegistry, per_size: int,
                   warm: int) -> list[StepCost]:  # fmt: skip
    decide = decider.decide  # type: ignore[attr-defined]
    i = 0
    while i < warm:  # fill the feature windows, as a running worker has them
        await decide(transactions[i : i + 256], datetime.now(UTC))
        i += 256
    costs = []
    for size in sizes:
        batches = max(20, per_size // size)
        before = _sums(registry)
        start = time.perf_counter()
        for _ in range(batches):
            await decide(transactions[i : i + size], datetime.now(UTC))
            i += size
        step_ms = (time.perf_counter() - start) * 1000.0 / batches
        parts = parts_from_samples(before, _sums(registry), batches, step_ms)
        costs.append(StepCost(size, batches, step_ms, parts))
        print(f"batch {size}: {step_ms:.2f} ms per batch", flush=True)
    return costs


def main(argv: Sequence[str] | None = None) -> None:
    from benchmarks.bench_end_to_end import ensure_engine_bundle, simulated_messages
    from streams.scoring import NoHooks
    from streams.worker import build_scoring

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="8,33,80,256")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    per_size, warm = (2_000, 5_000) if args.quick else (8_000, 15_000)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = load_settings(None, os.environ)
    ensure_engine_bundle(settings)
    needed = warm + sum(max(20, per_size // s) * s for s in sizes)
    decoder = transaction_decoder(settings.kafka.max_message_bytes, None)
    transactions = decoder.decode([v for _, v in simulated_messages(needed, seed=11)]).items
    with shared_dev_stack(settings.devstack) as stack:
        env = {k: v for k, v in os.environ.items() if k.startswith("FRAUDSTREAM__")}
        env["FRAUDSTREAM__REDIS__URL"] = stack.redis_url
        env["FRAUDSTREAM__FEATURES__KEY_PREFIX"] = f"bench-step-{uuid.uuid4().hex[:6]}"
        settings = load_settings(None, env)
        metrics = EngineMetrics(CollectorRegistry())
        parts = build_scoring(settings, NoHooks(), PrometheusEngineHooks(metrics))
        costs = asyncio.run(
            _measure(parts.decider, transactions, sizes, metrics.registry, per_size, warm)
        )
    setup = (
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), "
        f"{platform.python_version()}; Redis of the dev stack on the same machine; the "
        f"worker's decider and engine, the end-to-end bench's simulated stream after "
        f"{warm:,} transactions of warm-up; {per_size:,} transactions per batch size "
        "(at least 20 batches); parts are means per batch from the engine's own metrics."
    )
    print(report(costs, setup, args.out))


if __name__ == "__main__":
    main()
