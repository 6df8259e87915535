"""End to end on the real broker and Redis: sustained decisions per second, latency at
fractions of the peak, the no-op limit and the naive design side by side, and scaling
with worker processes.

    .venv/bin/python -m benchmarks.bench_end_to_end            # ~12 minutes
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
* **Latency at 50 / 70 / 90 / 100 % of the peak**: with the workers running,
  transactions are produced at that open-loop rate with live event times (a drain's
  own latency is only the age of the backlog it starts from, so the maximum rate is
  paced too); latency is the decision's broker timestamp minus the transaction's
  event time (which the decision repeats).
  It is split at the decision's ``decided_at`` (when the worker made the decision: the
  batch's start plus its feature lookup and scoring): event time to ``decided_at`` is
  the wait in Kafka and Faust's buffers plus the decision step; the rest is producing
  the decision and the wait for the broker's acknowledgements. The no-op worker is
  paced at the same rates (decisions per second, not its own fractions): its latency is
  what Kafka and Faust alone cost at that load on this machine, the floor under the
  engine's. A paced run that decides less than 97 % of its rate is marked "not
  sustained": its queue grew for the whole run, so its latency measures the run's
  length, not a steady load.
* **The decider in the worker's own process** (system ``in-process``: the engine worker
  with ``worker.decider_process = false``, the design before the decider moved to a
  child process of its own), drained and paced like the engine. Each run's deadline
  defaults and degraded decisions are counted for every system, and these two designs
  are side by side because that is where they differ most.
* **Scaling**: the engine's peak with 1, 2 and 4 workers (the topic has 4 partitions).
* **Where the CPU goes**: every run's CPU time by process (the workers with their
  children, the broker, Redis, this benchmark's own load generator and collector, the
  rest of the machine) over the span its rate is measured on, per decision
  (``benchmarks/cpu_meter.py``); what the workers, Kafka and Redis spend per decision
  sets the most the machine could sustain with every core busy.

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
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path

import msgspec

from benchmarks.cpu_meter import HARNESS, CpuMeter
from benchmarks.e2e_report import Collected, Run, finished, median_drain, plots, report
from features.table import epoch_ms
from fraudstream.devstack.testing import TestStack, shared_dev_stack
from fraudstream.settings import Settings, load_settings
from streams.replay import Message, messages_from_frame, produce
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ENGINE = [sys.executable, "-m", "fraudstream.cli", "worker"]
SYSTEMS: dict[str, list[str]] = {
    "engine": ENGINE,
    "noop": [sys.executable, "-m", "benchmarks.noop_worker"],
    "naive": [sys.executable, "-m", "benchmarks.naive_worker"],
    "in-process": ENGINE,
}
# What a system sets beside the benchmark's own settings.
SYSTEM_ENV: dict[str, dict[str, str]] = {
    "in-process": {"FRAUDSTREAM__WORKER__DECIDER_PROCESS": "false"},
}


def stack_env(stack: TestStack, base: dict[str, str]) -> dict[str, int]:
    """Point ``base`` (the workers' environment) at the dev stack; the pids of its
    broker and Redis by role, for the CPU meter (none for an external stack)."""
    base["FRAUDSTREAM__KAFKA__BOOTSTRAP_SERVERS"] = json.dumps(stack.bootstrap_servers)
    base["FRAUDSTREAM__REDIS__URL"] = stack.redis_url
    pids = (("kafka", stack.kafka_pid), ("redis", stack.redis_pid))
    return {role: pid for role, pid in pids if pid is not None}


def run_env(base: dict[str, str], suffix: str, partitions: int) -> dict[str, str]:
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
        app_id = env["FRAUDSTREAM__WORKER__APP_ID"]
        self.logs = [logs / f"{system}-{app_id}-{i}.log" for i in range(n)]
        for i in range(n):
            log = self.logs[i].open("w")
            worker_env = {
                **os.environ,
                **env,
                **SYSTEM_ENV.get(system, {}),
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


async def collect(settings: Settings, wanted: set[str], timeout_s: float) -> Collected:
    """(broker timestamp ms, event time ms, decided_at ms) of the first decision of each
    transaction in ``wanted``, and how many of those were deadline defaults or degraded,
    until all arrived or nothing new came for ``timeout_s``."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka_config import aiokafka_kwargs

    consumer = AIOKafkaConsumer(
        settings.kafka.topics.decisions,
        group_id=None,
        auto_offset_reset="earliest",
        **aiokafka_kwargs(settings.kafka),
    )
    await consumer.start()
    out: dict[str, tuple[int, int, int | None]] = {}
    collected = Collected()
    decode = msgspec.json.Decoder(_Stamps).decode
    idle_since = time.monotonic()
    try:
        while len(out) < len(wanted) and time.monotonic() - idle_since < timeout_s:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for r in records:
                    doc = decode(r.value)
                    tx = doc.transaction_id
                    if tx in wanted and tx not in out:
                        decided = doc.decided_at  # the no-op worker echoes its input
                        out[tx] = (
                            r.timestamp,
                            epoch_ms(doc.event_time),
                            None if decided is None else epoch_ms(decided),
                        )
                        collected.timeout_defaults += doc.timeout_default
                        collected.degraded += doc.degraded
                        idle_since = time.monotonic()
    finally:
        await consumer.stop()
    collected.seen = list(out.values())
    return collected


class _Stamps(msgspec.Struct):
    """The fields of a decision the collector reads: decoding only these keeps the
    benchmark's own process light (it shares the cores with what it measures)."""

    transaction_id: str
    event_time: datetime
    decided_at: datetime | None = None
    timeout_default: bool = False
    degraded: bool = False


def transaction_ids(messages: Sequence[Message]) -> set[str]:
    return {json.loads(v)["transaction_id"] for _, v in messages}


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
    services: Mapping[str, int] | None = None,
) -> list[Run]:
    """Peak with a pre-filled topic, then each rate (absolute, decisions/s) live.
    ``services`` (role -> pid: the broker's, Redis's) are metered with the workers."""
    services = services or {}
    suffix = f"{system}{workers}-{uuid.uuid4().hex[:6]}"
    env = run_env(base_env, suffix, partitions)
    settings = load_settings(None, env)
    asyncio.run(ensure_topics(settings.kafka))
    topic = settings.kafka.topics.transactions
    asyncio.run(produce(settings.kafka, topic, messages))
    procs = Workers(system, workers, env, logs)
    roles: dict[str, Callable[[], list[int]]] = {
        "workers": lambda: [p.pid for p in procs.procs],
        **{name: partial(list, [pid]) for name, pid in services.items()},
        HARNESS: partial(list, [os.getpid()]),
    }
    runs = []
    try:
        with CpuMeter(roles, alone=[HARNESS]) as meter:
            got = asyncio.run(collect(settings, transaction_ids(messages), timeout_s=120))
            peak = Run(system, workers, "peak", None, len(messages), 0, 0.0)
            runs.append(finished(peak, got, meter, latency=False))
            for rate in rates:
                fresh = [(k, _renamed(v)) for k, v in messages[:rate_messages]]

                async def live(rate: float = rate, fresh: list[Message] = fresh) -> Collected:
                    wanted = transaction_ids(fresh)
                    collector = asyncio.create_task(collect(settings, wanted, timeout_s=30))
                    await produce(settings.kafka, topic, fresh, rate=rate, live=True)
                    return await collector

                got = asyncio.run(live())
                paced = Run(system, workers, "rate", rate, len(fresh), 0, 0.0)
                runs.append(finished(paced, got, meter, latency=True))
    finally:
        procs.stop()
    return runs


def _renamed(value: bytes) -> bytes:
    """A copy with a new transaction id, so a live phase is not a redelivery."""
    doc = json.loads(value)
    doc["transaction_id"] = f"L{uuid.uuid4().hex[:12]}-{doc['transaction_id']}"[:64]
    return json.dumps(doc).encode()


def simulated_messages(n: int, seed: int) -> list[Message]:
    from fraudstream.simulator import SimulatorConfig, generate

    # ~2 payments per card and day: enough cards and days for n transactions.
    days = 4
    cards = max(200, n // (2 * days) + 1)
    config = SimulatorConfig(seed=seed, n_cards=cards, n_terminals=max(40, cards // 4), days=days)
    return messages_from_frame(generate(config).transactions.head(n))


def ensure_engine_bundle(settings: Settings) -> None:
    """The engine and naive workers score with the bundle at ``models.bundle_dir``: the
    demo's small engine is trained there when there is none."""
    from rich.console import Console

    from streams.demo_engine import demo_simulation, ensure_engine

    ensure_engine(settings, demo_simulation(7), 7, Console(stderr=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--transactions", type=int, default=60_000)
    parser.add_argument("--systems", default="engine,noop,naive,in-process")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--fractions", default="0.5,0.7,0.9,1.0")
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
    messages = simulated_messages(n, seed=11)
    ensure_engine_bundle(settings)
    runs: list[Run] = []
    with shared_dev_stack(settings.devstack) as stack:
        services = stack_env(stack, base_env)
        fractions = [float(f) for f in args.fractions.split(",") if f]
        systems = [s for s in args.systems.split(",") if s]
        drains: dict[str, list[Run]] = {s: [] for s in systems}
        for round_ in range(repeats):
            for system in systems:
                if system == "naive" and round_ > 0:
                    continue
                replay = messages[: args.naive_transactions] if system == "naive" else messages
                drains[system] += measure(system, 1, replay, base_env, logs, services=services)
                print(f"{system}: drain at {drains[system][-1].rate:,.0f}/s", flush=True)
        paced: list[Run] = []
        engine_peak = median_drain(drains["engine"]).rate if "engine" in drains else 0.0
        if engine_peak > 0 and fractions:
            rates = [f * engine_peak for f in fractions]
            for system in [s for s in ("engine", "in-process", "noop") if s in systems]:
                # The paced runs' workers drain the filled topic first: one more drain.
                first, *more = measure(
                    system,
                    1,
                    messages,
                    base_env,
                    logs,
                    rates=rates,
                    rate_messages=rate_n,
                    services=services,
                )
                drains[system].append(first)
                paced += more
        for system in systems:
            runs.append(median_drain(drains[system]))
            print(f"{system}: peak {runs[-1].rate:,.0f} decisions/s (median)", flush=True)
        runs += paced
        if "engine" in args.systems:
            for workers in [int(w) for w in args.workers.split(",") if int(w) > 1]:
                runs += measure("engine", workers, messages, base_env, logs, services=services)
    setup = (
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), {platform.python_version()}; "
        f"Kafka (KRaft, one broker) and Redis on the same machine; {n:,} simulated "
        f"transactions per peak run (the naive worker: the first "
        f"{min(n, args.naive_transactions):,}), {rate_n:,} per paced run; topics with 4 "
        "partitions; the one-worker drains are repeated and the median shown."
    )
    plots(runs, args.out)
    print(report(runs, setup, args.out, os.cpu_count() or 1))


if __name__ == "__main__":
    main()
