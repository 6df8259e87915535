"""The end-to-end benchmark's results: the runs, their arithmetic (median drain,
latency percentiles, CPU per decision) and the report (markdown, JSON, PNG plots).
Measuring is ``benchmarks/bench_end_to_end.py``'s."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.cpu_meter import CpuMeter, cpu_table


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
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU per decision, by role
    cpu_busy: float = 0.0  # share of the machine's cores busy over the measured span
    # Of the decisions counted: the deadline passed and the configured default went out
    # instead; decided with a layer skipped (its breaker open) or without the online
    # features. A rate reached by defaulting is not a rate of decisions.
    timeout_defaults: int = 0
    degraded: int = 0


def median_drain(drains: Sequence[Run]) -> Run:
    """The drain with the median rate (the lower middle one of an even count), carrying
    every drain's rate, so the report shows the spread beside the median."""
    ordered = sorted(drains, key=lambda r: r.rate)
    middle = ordered[(len(ordered) - 1) // 2]
    middle.drains = [r.rate for r in drains]
    middle.decided = min(r.decided for r in drains)  # every drain must decide all sent
    return middle


# (decision's broker timestamp, transaction's event time, decision's decided_at), ms
Seen = list[tuple[int, int, int | None]]


@dataclass
class Collected:
    """What the collector read of a run's decisions (the first of each transaction)."""

    seen: Seen = field(default_factory=list)
    timeout_defaults: int = 0
    degraded: int = 0

    def counted(self, run: Run) -> Run:
        run.timeout_defaults, run.degraded = self.timeout_defaults, self.degraded
        return run


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


def with_cpu(run: Run, seen: Seen, meter: CpuMeter) -> Run:
    """``run`` with the CPU each role used per decision between its first and last
    decision (the span its rate is measured over)."""
    if not seen:
        return run
    stamps = [s for s, _, _ in seen]
    span = meter.between(min(stamps) / 1000.0, max(stamps) / 1000.0)
    if span is not None:
        run.cpu_us = span.per_decision_us(len(seen))
        run.cpu_busy = span.busy_share
    return run


def finished(run: Run, got: Collected, meter: CpuMeter, latency: bool) -> Run:
    """``run`` with all a collection says: the defaults and degraded counted, the rate
    (and with ``latency`` its percentiles), the CPU per decision."""
    return with_cpu(summarise(got.counted(run), got.seen, latency), got.seen, meter)


def plots(runs: list[Run], out: Path) -> list[str]:
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


# A paced run that decided less than this share of its target rate fell behind: its
# queue grew for the whole run, so its latency says how long the run was, not what a
# steady load costs.
SUSTAINED = 0.97


def sustained(run: Run) -> bool:
    return run.target_rate is None or run.rate >= SUSTAINED * run.target_rate


def latency_beside_the_limit(runs: Sequence[Run]) -> list[str]:
    """One line per rate at which both the engine and the no-op worker were paced: the
    engine, any other design paced there (the in-process decider), then the no-op."""
    paced = {(r.system, r.target_rate): r for r in runs if r.mode == "rate"}
    lines = []
    for (system, rate), engine in paced.items():
        noop = paced.get(("noop", rate))
        if system != "engine" or rate is None or noop is None:
            continue
        others = [r for (s, t), r in paced.items() if t == rate and s not in ("engine", "noop")]
        parts = [_latency(r) for r in (engine, *others, noop) if r.latency_ms]
        if len(parts) > 1 and engine.latency_ms:
            lines.append(f"- {rate:,.0f}/s: " + ", ".join(parts))
    return lines


def _latency(run: Run) -> str:
    name = "no-op" if run.system == "noop" else run.system
    behind = "" if sustained(run) else f" (not sustained: {run.rate:,.0f}/s decided)"
    lat = run.latency_ms
    return f"{name} p50 / p99 {lat['p50']:.0f} / {lat['p99']:.0f} ms{behind}"


def _share(count: int, of: int) -> str:
    return f"{count:,} ({100.0 * count / of:.1f} %)" if of else ""


def report(runs: list[Run], setup: str, out: Path, cores: int = 1) -> str:
    peak = {(r.system, r.workers): r.rate for r in runs if r.mode == "peak"}
    engine1 = peak.get(("engine", 1), 0.0)
    lines = [
        "# End to end: engine, no-op limit, naive design",
        "",
        setup,
        "",
        "| system | workers | mode | target/s | sent | decided | decisions/s "
        "| drains (min–max) | p50 ms | p95 ms | p99 ms | of which to decided_at p50 / p99 ms "
        "| timeout defaults | degraded |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in runs:
        lat = r.latency_ms
        spread = (
            f"{len(r.drains)}: {min(r.drains):,.0f}–{max(r.drains):,.0f}"
            if len(r.drains) > 1
            else ""
        )
        mode = r.mode if sustained(r) else f"{r.mode}, not sustained"
        lines.append(
            f"| {r.system} | {r.workers} | {mode} | "
            f"{'' if r.target_rate is None else f'{r.target_rate:,.0f}'} | {r.sent:,} | "
            f"{r.decided:,} | {r.rate:,.0f} | {spread} | "
            + " | ".join(f"{lat[k]:.1f}" if k in lat else "" for k in ("p50", "p95", "p99"))
            + " | "
            + (
                f"{lat['decided_p50']:.1f} / {lat['decided_p99']:.1f}"
                if "decided_p50" in lat
                else ""
            )
            + f" | {_share(r.timeout_defaults, r.decided)} | {_share(r.degraded, r.decided)} |"
        )
    floor = latency_beside_the_limit(runs)
    if floor:
        lines += ["", "Latency beside the no-op limit, paced at the same rates:", "", *floor]
    if engine1:
        lines += ["", "Ratios at one worker (median peak decisions per second):", ""]
        for other in ("noop", "naive"):
            if peak.get((other, 1)):
                lines.append(f"- engine / {other}: {engine1 / peak[(other, 1)]:.2f}")
    cpu = cpu_table(
        ((f"{r.system} x{r.workers} {r.mode}", r.rate, r.cpu_us, r.cpu_busy) for r in runs),
        cores,
    )
    if cpu:
        lines += [
            "",
            "Where the CPU goes: µs of CPU per decision by process, from the first to the "
            "last decision of each run (the load generator and collector are this "
            "benchmark's own process; the ceiling counts only the workers, Kafka and "
            f"Redis, as if they had all {cores} cores to themselves; what the hypervisor "
            "withheld from this virtual machine is shown apart: a run that lost much ran "
            "slower than the machine can):",
            "",
            *cpu,
        ]
    lines += ["", "![throughput](e2e_throughput.png)", "", "![latency](e2e_latency_cdf.png)", ""]
    text = "\n".join(lines)
    (out / "end_to_end.md").write_text(text)
    (out / "end_to_end.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return text
