"""End to end on the real broker and Redis: sustained decisions per second, latency at
fractions of the peak, the no-op limit and the naive design side by side, and scaling
with worker processes.

    .venv/bin/python -m benchmarks.bench_end_to_end            # ~10-12 minutes
    .venv/bin/python -m benchmarks.bench_end_to_end --quick    # ~3 minutes

Each *system* runs as real worker processes (``fraudstream worker``; the no-op worker of
``benchmarks/noop_worker.py``; the naive worker of ``benchmarks/naive_worker.py``) on
topics and a consumer group of its own, against the dev stack (brought up if needed).

* **Peak (drain)**: the transactions topic is filled first, then the workers start; the
  rate is decisions over the span between the first and the last decision's broker
  timestamp, so start-up is not counted. On a small shared machine one drain varies by
  up to 2x (the broker, Redis and the workers compete for the same cores), so the
  one-worker drains are repeated (``--repeats``, alternating the systems so a slow
  spell hits each alike) and the median is reported with the range; the ratios use
  the medians. The naive worker drains once, and only the first
  ``--naive-transactions`` of the replay (at ~100-160 decisions/s all 60,000 would
  take ten minutes; its rate is as steady over 10,000).
* **Latency at 50 / 70 / 90 % of the peak**: with the workers running, transactions are
  produced at that open-loop rate with live event times; latency is the decision's
  broker timestamp minus the transaction's event time (which the decision repeats).
  It is split at the decision's ``decided_at`` (when the worker made the decision: the
  batch's start plus its feature lookup and scoring): event time to ``decided_at`` is
  the wait in Kafka and Faust's buffers plus the decision step; the rest is producing
  the decision and the wait for the broker's acknowledgements. The no-op worker is
  paced at the same rates (decisions per second, not its own fractions): its latency is
  what Kafka and Faust alone cost at that load on this machine, the floor under the
  engine's.
* **Scaling**: the engine's peak with 1, 2 and 4 workers (the topic has 4 partitions).

The report (markdown, JSON and PNG plots: latency CDF, throughput over time) goes to
``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from features.table import epoch_ms
from fraudstream.devstack.testing import shared_dev_stack
from fraudstream.settings import Settings, load_settings
from streams.replay import Message, messages_from_frame, produce
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SYSTEMS: dict[str, list[str]] = {
    "engine": [sys.executable, "-m", "fraudstream.cli", "worker"],
    "noop": [sys.executable, "-m", "benchmarks.noop_worker"],
    "naive": [sys.executable, "-m", "benchmarks.naive_worker"],
}


@dataclass
class Run:
    system: str
    workers: int
    mode: str  # "peak" or "rate"
    target_rate: float | None
    sent: int
    decided: int
    rate: float  # decisions per second over the measured span
    latency_ms: dict[str, float] = field(default_factory=dict)
    per_second: list[int] = field(default_factory=list)
    latency_sample: list[float] = field(default_factory=list)  # for the CDF plot
    drains: list[float] = field(default_factory=list)  # every peak drain's rate, in order


def median_drain(drains: Sequence[Run]) -> Run:
    """The drain with the median rate (the lower middle one of an even count), carrying
    every drain's rate, so the report shows the spread beside the median."""
    ordered = sorted(drains, key=lambda r: r.rate)
    middle = ordered[(len(ordered) - 1) // 2]
    middle.drains = [r.rate for r in drains]
    middle.decided = min(r.decided for r in drains)  # every drain must decide all sent
    return middle


def _env(base: dict[str, str], suffix: str, partitions: int) -> dict[str, str]:
    env = dict(base)
    for key in ("TRANSACTIONS", "DECISIONS", "DEADLETTER", "LABELS", "DECISIONS_SHADOW"):
        env[f"FRAUDSTREAM__KAFKA__TOPICS__{key}"] = f"bench-{suffix}-{key.lower()}"
    env["FRAUDSTREAM__KAFKA__PARTITIONS"] = str(partitions)
    env["FRAUDSTREAM__WORKER__APP_ID"] = f"bench-{suffix}"
    env["FRAUDSTREAM__WORKER__METRICS_PORT"] = "0"
    env["FRAUDSTREAM__FEATURES__KEY_PREFIX"] = f"bench-{suffix}"
    return env


class Workers:
    """``n`` worker processes of one system, each logging to its own file."""

    def __init__(self, system: str, n: int, env: dict[str, str], logs: Path) -> None:
        import subprocess

        self.procs = []
        for i in range(n):
            log = (logs / f"{system}-{env['FRAUDSTREAM__WORKER__APP_ID']}-{i}.log").open("w")
            worker_env = {
                **os.environ,
                **env,
                "PYTHONUNBUFFERED": "1",
                "FRAUDSTREAM__WORKER__DATA_DIR": str(logs / f"data-{uuid.uuid4().hex[:8]}"),
            }
            self.procs.append(
                subprocess.Popen(SYSTEMS[system], cwd=REPO, env=worker_env, stdout=log, stderr=log)
            )

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except Exception:
                proc.kill()


# (decision's broker timestamp, transaction's event time, decision's decided_at), ms
Seen = list[tuple[int, int, int | None]]


async def _collect(settings: Settings, wanted: set[str], timeout_s: float) -> Seen:
    """(broker timestamp ms, event time ms) of the first decision of each transaction in
    ``wanted``, until all arrived or nothing new came for ``timeout_s``."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka_config import aiokafka_kwargs

    consumer = AIOKafkaConsumer(
        settings.kafka.topics.decisions,
        group_id=None,
        auto_offset_reset="earliest",
        **aiokafka_kwargs(settings.kafka),
    )
    await consumer.start()
    out: dict[str, tuple[int, int]] = {}
    idle_since = time.monotonic()
    try:
        while len(out) < len(wanted) and time.monotonic() - idle_since < timeout_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for r in records:
                    doc = json.loads(r.value)
                    tx = doc["transaction_id"]
                    if tx in wanted and tx not in out:
                        decided = doc.get("decided_at")  # the no-op worker echoes input
                        out[tx] = (
                            r.timestamp,
                            _ms(doc["event_time"]),
                            None if decided is None else _ms(decided),
                        )
                        idle_since = time.monotonic()
    finally:
        await consumer.stop()
    return list(out.values())


def _ms(iso: str) -> int:
    return epoch_ms(datetime.fromisoformat(iso))


def _ids(messages: Sequence[Message]) -> set[str]:
    return {json.loads(v)["transaction_id"] for _, v in messages}


CDF_POINTS = 1_000  # latencies kept per paced run for the CDF plot (evenly by rank)


def summarise(run: Run, seen: Seen, latency: bool) -> Run:
    if not seen:
        return run
    stamps = np.array([s for s, _, _ in seen], dtype=np.int64)
    span_s = max((stamps.max() - stamps.min()) / 1000.0, 1e-3)
    run.decided = len(seen)
    run.rate = len(seen) / span_s
    seconds = (stamps - stamps.min()) // 1000
    run.per_second = np.bincount(seconds).astype(int).tolist()
    if latency:
        lat = np.array([s - e for s, e, _ in seen], dtype=np.float64)
        run.latency_ms = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)} | {
            "max": float(lat.max())
        }
        to_decision = np.array([d - e for _, e, d in seen if d is not None], dtype=np.float64)
        if len(to_decision):
            run.latency_ms |= {
                f"decided_p{q}": float(np.percentile(to_decision, q)) for q in (50, 99)
            }
        ranked = np.sort(lat)
        keep = np.linspace(0, len(ranked) - 1, min(len(ranked), CDF_POINTS)).round().astype(int)
        run.latency_sample = ranked[keep].tolist()
    return run


def measure(
    system: str,
    workers: int,
    messages: Sequence[Message],
    base_env: dict[str, str],
    logs: Path,
    *,
    rates: Sequence[float] = (),
    rate_messages: int = 0,
    partitions: int = 4,
) -> list[Run]:
    """Peak with a pre-filled topic, then each rate (absolute, decisions/s) live."""
    suffix = f"{system}{workers}-{uuid.uuid4().hex[:6]}"
    env = _env(base_env, suffix, partitions)
    settings = load_settings(None, env)
    asyncio.run(ensure_topics(settings.kafka))
    topic = settings.kafka.topics.transactions
    asyncio.run(produce(settings.kafka, topic, messages))
    procs = Workers(system, workers, env, logs)
    runs = []
    try:
        seen = asyncio.run(_collect(settings, _ids(messages), timeout_s=120))
        peak = Run(system, workers, "peak", None, len(messages), 0, 0.0)
        runs.append(summarise(peak, seen, latency=False))
        for rate in rates:
            fresh = [(k, _renamed(v)) for k, v in messages[:rate_messages]]

            async def live(rate: float = rate, fresh: list[Message] = fresh) -> Seen:
                collector = asyncio.create_task(_collect(settings, _ids(fresh), timeout_s=30))
                await produce(settings.kafka, topic, fresh, rate=rate, live=True)
                return await collector

            got = asyncio.run(live())
            paced = Run(system, workers, "rate", rate, len(fresh), 0, 0.0)
            runs.append(summarise(paced, got, latency=True))
    finally:
        procs.stop()
    return runs


def _renamed(value: bytes) -> bytes:
    """A copy with a new transaction id, so a live phase is not a redelivery."""
    doc = json.loads(value)
    doc["transaction_id"] = f"L{uuid.uuid4().hex[:12]}-{doc['transaction_id']}"[:64]
    return json.dumps(doc).encode()


def _messages(n: int, seed: int) -> list[Message]:
    from fraudstream.simulator import SimulatorConfig, generate

    # ~2 payments per card and day: enough cards and days for n transactions.
    days = 4
    cards = max(200, n // (2 * days) + 1)
    config = SimulatorConfig(seed=seed, n_cards=cards, n_terminals=max(40, cards // 4), days=days)
    return messages_from_frame(generate(config).transactions.head(n))


def _ensure_engine(settings: Settings) -> None:
    """The engine and naive workers score with the bundle at ``models.bundle_dir``: the
    demo's small engine is trained there when there is none."""
    from rich.console import Console

    from streams.demo import demo_simulation, ensure_engine

    ensure_engine(settings, demo_simulation(7), 7, Console(stderr=True))


def _plots(runs: list[Run], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    written = []
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for run in runs:
        if run.mode == "peak" and run.per_second:
            ax.plot(run.per_second, label=f"{run.system} x{run.workers}")
    ax.set_xlabel("second of the drain")
    ax.set_ylabel("decisions per second")
    ax.legend()
    fig.savefig(out / "e2e_throughput.png", dpi=100)
    written.append("e2e_throughput.png")

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for run in runs:
        if run.latency_sample:
            ys = np.linspace(0, 1, len(run.latency_sample))
            rate = run.target_rate or 0.0
            ax.plot(run.latency_sample, ys, label=f"{run.system} x{run.workers} @ {rate:,.0f}/s")
    ax.set_xscale("log")
    ax.set_xlabel("event time → decision produced (ms)")
    ax.set_ylabel("share of decisions")
    ax.legend()
    fig.savefig(out / "e2e_latency_cdf.png", dpi=100)
    written.append("e2e_latency_cdf.png")
    return written


def latency_beside_the_limit(runs: Sequence[Run]) -> list[str]:
    """One line per rate at which both the engine and the no-op worker were paced."""
    paced = {(r.system, r.target_rate): r.latency_ms for r in runs if r.mode == "rate"}
    lines = []
    for (system, rate), engine in paced.items():
        noop = paced.get(("noop", rate))
        if system != "engine" or rate is None or not noop or not engine:
            continue
        lines.append(
            f"- {rate:,.0f}/s: engine p50 / p99 {engine['p50']:.0f} / {engine['p99']:.0f} ms,"
            f" no-op {noop['p50']:.0f} / {noop['p99']:.0f} ms"
        )
    return lines


def report(runs: list[Run], setup: str, out: Path) -> str:
    peak = {(r.system, r.workers): r.rate for r in runs if r.mode == "peak"}
    engine1 = peak.get(("engine", 1), 0.0)
    lines = [
        "# End to end: engine, no-op limit, naive design",
        "",
        setup,
        "",
        "| system | workers | mode | target/s | sent | decided | decisions/s "
        "| drains (min–max) | p50 ms | p95 ms | p99 ms | of which to decided_at p50 / p99 ms |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in runs:
        lat = r.latency_ms
        spread = (
            f"{len(r.drains)}: {min(r.drains):,.0f}–{max(r.drains):,.0f}"
            if len(r.drains) > 1
            else ""
        )
        lines.append(
            f"| {r.system} | {r.workers} | {r.mode} | "
            f"{'' if r.target_rate is None else f'{r.target_rate:,.0f}'} | {r.sent:,} | "
            f"{r.decided:,} | {r.rate:,.0f} | {spread} | "
            + " | ".join(f"{lat[k]:.1f}" if k in lat else "" for k in ("p50", "p95", "p99"))
            + " | "
            + (
                f"{lat['decided_p50']:.1f} / {lat['decided_p99']:.1f}"
                if "decided_p50" in lat
                else ""
            )
            + " |"
        )
    floor = latency_beside_the_limit(runs)
    if floor:
        lines += ["", "Latency beside the no-op limit, paced at the same rates:", "", *floor]
    if engine1:
        lines += ["", "Ratios at one worker (median peak decisions per second):", ""]
        for other in ("noop", "naive"):
            if peak.get((other, 1)):
                lines.append(f"- engine / {other}: {engine1 / peak[(other, 1)]:.2f}")
    lines += ["", "![throughput](e2e_throughput.png)", "", "![latency](e2e_latency_cdf.png)", ""]
    text = "\n".join(lines)
    (out / "end_to_end.md").write_text(text)
    (out / "end_to_end.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--transactions", type=int, default=60_000)
    parser.add_argument("--systems", default="engine,noop,naive")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--fractions", default="0.5,0.7,0.9")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=3, help="one-worker peak drains")
    parser.add_argument("--naive-transactions", type=int, default=10_000)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    n = 10_000 if args.quick else args.transactions
    rate_n = n // 4
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "e2e-logs"
    logs.mkdir(exist_ok=True)
    settings = load_settings(None, os.environ)
    base_env = {k: v for k, v in os.environ.items() if k.startswith("FRAUDSTREAM__")}
    messages = _messages(n, seed=11)
    _ensure_engine(settings)
    runs: list[Run] = []
    with shared_dev_stack(settings.devstack) as stack:
        base_env["FRAUDSTREAM__KAFKA__BOOTSTRAP_SERVERS"] = json.dumps(stack.bootstrap_servers)
        base_env["FRAUDSTREAM__REDIS__URL"] = stack.redis_url
        fractions = [float(f) for f in args.fractions.split(",") if f]
        systems = [s for s in args.systems.split(",") if s]
        drains: dict[str, list[Run]] = {s: [] for s in systems}
        for round_ in range(repeats):
            for system in systems:
                if system == "naive" and round_ > 0:
                    continue
                replay = messages[: args.naive_transactions] if system == "naive" else messages
                drains[system] += measure(system, 1, replay, base_env, logs)
                print(f"{system}: drain at {drains[system][-1].rate:,.0f}/s", flush=True)
        paced: list[Run] = []
        engine_peak = median_drain(drains["engine"]).rate if "engine" in drains else 0.0
        if engine_peak > 0 and fractions:
            rates = [f * engine_peak for f in fractions]
            for system in [s for s in ("engine", "noop") if s in systems]:
                # The paced runs' workers drain the filled topic first: one more drain.
                first, *more = measure(
                    system, 1, messages, base_env, logs, rates=rates, rate_messages=rate_n
                )
                drains[system].append(first)
                paced += more
        for system in systems:
            runs.append(median_drain(drains[system]))
            print(f"{system}: peak {runs[-1].rate:,.0f} decisions/s (median)", flush=True)
        runs += paced
        if "engine" in args.systems:
            for workers in [int(w) for w in args.workers.split(",") if int(w) > 1]:
                runs += measure("engine", workers, messages, base_env, logs)
    setup = (
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), {platform.python_version()}; "
        f"Kafka (KRaft, one broker) and Redis on the same machine; {n:,} simulated "
        f"transactions per peak run (the naive worker: the first "
        f"{min(n, args.naive_transactions):,}), {rate_n:,} per paced run; topics with 4 "
        "partitions; the one-worker drains are repeated and the median shown."
    )
    _plots(runs, args.out)
    print(report(runs, setup, args.out))


if __name__ == "__main__":
    main()
