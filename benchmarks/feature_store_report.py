"""The feature-store benchmark's results and their markdown report (``bench_feature_store``)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from benchmarks.feature_store_stream import Stream

WARM_BATCH = 1024  # transactions per ``compute`` call while warming the engine's state


@dataclass(frozen=True)
class EntityMemory:
    design: str
    entity: str
    count: int
    bytes_mean: float
    bytes_p99: float
    events_mean: float
    events_p99: float


@dataclass
class Run:
    design: str
    batch: int
    transactions: int
    calls: int
    seconds: float
    client_cpu_seconds: float
    call_p50_ms: float
    call_p99_ms: float
    redis_usec: int  # Redis-side time of the commands that did the work
    redis_calls: int
    redis_call_p50_us: float | None = None  # Redis latencystats, when it has them
    redis_call_p99_us: float | None = None
    round_trips: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tx_per_s(self) -> float:
        return self.transactions / self.seconds

    def per_tx_us(self, seconds: float) -> float:
        return seconds * 1e6 / self.transactions


@dataclass
class Results:
    runs: list[Run]
    memory: list[EntityMemory]
    total_bytes: dict[str, int]
    warm_seconds: dict[str, float]
    agreement: dict[str, float]
    engine_consistent: bool
    ping_us: dict[str, float]  # one PING: wall and client CPU, µs


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def report(stream: Stream, res: Results, setup: str) -> str:
    runs, warm_seconds = res.runs, res.warm_seconds
    naive = next(r for r in runs if r.design == "naive")
    lines = [
        "# Online feature store: engine vs naive",
        "",
        f"- Stream: {stream.source}.",
        f"- Warm-up: {len(stream.warm):,} transactions "
        f"({stream.warm[0].event_time:%Y-%m-%d} to {stream.warm[-1].event_time:%Y-%m-%d}); "
        f"engine through `compute` at batch {WARM_BATCH} in {warm_seconds['engine']:.1f} s "
        f"({len(stream.warm) / warm_seconds['engine']:,.0f} tx/s), naive through its "
        f"pipelined loader in {warm_seconds['naive']:.1f} s.",
        f"- Measured: the next {len(stream.measure):,} transactions (naive: the first "
        f"{naive.transactions:,} of them), each design and batch size from a copy of the "
        "same warmed state. Fraud labels becoming known during the measured span are not "
        "applied.",
        f"- Machine: {setup}",
        "",
        "## Throughput and where the time goes",
        "",
        "Client = wall time per transaction in `compute` (client CPU in brackets); "
        "Redis = server time of the commands doing the work (`INFO commandstats`: "
        "`evalsha` for the engine, all commands for the naive store). The rest of the "
        "client time is network, scheduling and waiting.",
        "",
        "| design | batch | tx | calls | tx/s | engine/naive | call p50 ms | call p99 ms "
        "| client µs/tx (cpu) | Redis µs/tx | Redis share | Redis µs/call p50 / p99 "
        "| round trips/tx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        redis_tx = r.redis_usec / r.transactions
        client_tx = r.per_tx_us(r.seconds)
        ratio = r.tx_per_s / naive.tx_per_s if r.design == "engine" else 1.0
        redis_call = (
            f"{_fmt(r.redis_call_p50_us, 0)} / {_fmt(r.redis_call_p99_us, 0)}"
            if r.redis_call_p50_us is not None
            else f"{_fmt(r.redis_usec / max(r.redis_calls, 1))} (mean)"
        )
        lines.append(
            f"| {r.design} | {r.batch if r.design == 'engine' else '-'} | {r.transactions:,} "
            f"| {r.calls:,} | {r.tx_per_s:,.0f} | {ratio:,.1f}x | {r.call_p50_ms:.3f} "
            f"| {r.call_p99_ms:.3f} | {client_tx:,.1f} ({r.per_tx_us(r.client_cpu_seconds):,.1f}) "
            f"| {redis_tx:,.1f} | {redis_tx / client_tx:.0%} | {redis_call} "
            f"| {r.redis_calls / r.transactions:.2f} |"
        )
    big = max((r for r in runs if r.design == "engine"), key=lambda r: r.batch)
    inner, n = big.extra.get("script_commands", {}), big.transactions
    if inner:
        lines += [
            "",
            f"Inside the script at batch {big.batch}, per transaction (Redis counts the "
            "commands a script runs in `commandstats` too; the rest of the script's time "
            "is Lua): "
            + ", ".join(
                f"{k} {v['calls'] / n:.1f} calls {v['usec'] / n:.1f} µs"
                for k, v in list(inner.items())[:8]
            )
            + ".",
        ]
    lines += [
        "",
        f"One `PING` round trip on this client and machine: {res.ping_us['wall']:.0f} µs "
        f"wall, {res.ping_us['client_cpu']:.0f} µs of it client CPU (redis-py). The naive "
        "store pays that per command; over a real network each also costs the network's "
        "round-trip time, which the engine pays once per batch.",
        "",
        "## Memory after warm-up",
        "",
        "`MEMORY USAGE <key> SAMPLES 0` summed over each entity's keys (engine: card "
        "`:z` + `:h`, terminal `:z` + `:f`; naive: card `:z`, terminal `:z` + `:f`); "
        "events = entries of the entity's event log.",
        "",
        "| design | entity | entities | bytes mean | bytes p99 | events mean | events p99 "
        "| bytes/event |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in res.memory:
        per_event = m.bytes_mean / m.events_mean if m.events_mean else float("nan")
        lines.append(
            f"| {m.design} | {m.entity} | {m.count:,} | {m.bytes_mean:,.0f} | {m.bytes_p99:,.0f} "
            f"| {m.events_mean:,.1f} | {m.events_p99:,.0f} | {_fmt(per_event, 0)} |"
        )
    lines += [
        "",
        "Total of the keys: " + ", ".join(f"{k} {v:,} bytes" for k, v in res.total_bytes.items()),
    ]
    agree = res.agreement
    worst = sorted(agree.items(), key=lambda kv: kv[1])[:5]
    lines += [
        "",
        "## Same features?",
        "",
        f"On the {naive.transactions:,} transactions both computed from the same state, "
        f"{statistics.fmean(agree.values()):.2%} of feature values agree (counts exactly, "
        "others within 1e-9 relative, NaN = NaN); least: "
        + ", ".join(f"`{k}` {v:.2%}" for k, v in worst)
        + ". The engine's rows are "
        + ("identical" if res.engine_consistent else "**not identical**")
        + " at every batch size.",
        "",
    ]
    return "\n".join(lines)
