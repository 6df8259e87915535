"""The end-to-end report's arithmetic: the median of repeated drains and its spread."""

from __future__ import annotations

from pathlib import Path

from benchmarks.e2e_report import (
    CDF_POINTS,
    Collected,
    Run,
    median_drain,
    plots,
    report,
    summarise,
)


def drain(rate: float, decided: int = 1000, system: str = "engine") -> Run:
    return Run(system, 1, "peak", None, 1000, decided, rate)


def test_the_median_drain_carries_every_rate_and_the_fewest_decided() -> None:
    runs = [drain(1800.0), drain(1200.0, decided=998), drain(1500.0)]
    got = median_drain(runs)
    assert got.rate == 1500.0
    assert got.drains == [1800.0, 1200.0, 1500.0]
    assert got.decided == 998  # a drain that lost decisions is not hidden by the median


def test_an_even_count_takes_the_lower_middle_and_one_drain_is_itself() -> None:
    assert median_drain([drain(3.0), drain(1.0), drain(4.0), drain(2.0)]).rate == 2.0
    single = median_drain([drain(7.0)])
    assert (single.rate, single.drains) == (7.0, [7.0])


def test_the_report_shows_the_spread_and_ratios_of_medians(tmp_path: Path) -> None:
    engine = median_drain([drain(1800.0), drain(1200.0), drain(1500.0)])
    noop = median_drain([drain(6000.0, system="noop"), drain(3000.0, system="noop")])
    text = report([engine, noop], "setup", tmp_path)
    assert "| engine | 1 | peak |  | 1,000 | 1,000 | 1,500 | 3: 1,200–1,800 |" in text
    assert "| noop | 1 | peak |  | 1,000 | 1,000 | 3,000 | 2: 3,000–6,000 |" in text
    assert "- engine / noop: 0.50" in text
    assert (tmp_path / "end_to_end.json").exists()


def test_a_paced_run_keeps_its_latencies_for_the_cdf_plot(tmp_path: Path) -> None:
    # (broker timestamp, event time, decided_at) in ms: latencies 0, 3, 6, ... over 3
    # seconds, a third of each spent before the worker stamped its decision
    seen = [(1_000_000 + i, 1_000_000 - 2 * i, 1_000_000 - i) for i in range(3000)]
    run = summarise(Run("engine", 1, "rate", 1000.0, 3000, 0, 0.0), seen, latency=True)
    assert run.decided == 3000 and run.latency_ms["p50"] == 4498.5
    assert run.latency_ms["decided_p50"] == 1499.5
    sample = run.latency_sample
    assert len(sample) == CDF_POINTS and sample == sorted(sample)
    assert (sample[0], sample[-1]) == (0.0, 8997.0)  # the extremes are kept
    peak = summarise(Run("engine", 1, "peak", None, 3000, 0, 0.0), seen, latency=False)
    assert peak.latency_sample == [] and peak.latency_ms == {}
    plots([peak, run], tmp_path)
    assert (tmp_path / "e2e_latency_cdf.png").stat().st_size > 0
    lat = run.latency_ms
    row = f"| 4498.5 | {lat['p95']:.1f} | {lat['p99']:.1f} | 1499.5 / {lat['decided_p99']:.1f} |"
    assert row in report([run], "setup", tmp_path)
    # Outputs without a decided_at (the no-op worker echoes its input): no split.
    echoed = [(stamp, event, None) for stamp, event, _ in seen]
    noop = summarise(Run("noop", 1, "rate", 1000.0, 3000, 0, 0.0), echoed, latency=True)
    assert noop.latency_ms["p50"] == 4498.5 and "decided_p50" not in noop.latency_ms
    assert "| 4498.5 |" in report([noop], "setup", tmp_path)


def test_paced_latency_is_set_beside_the_no_op_limit_at_the_same_rate(tmp_path: Path) -> None:
    def paced(system: str, rate: float, p50: float, p99: float) -> Run:
        run = Run(system, 1, "rate", rate, 100, 100, rate)
        run.latency_ms = {"p50": p50, "p95": p99, "p99": p99}
        return run

    runs = [
        paced("engine", 810.0, 55.0, 599.4),
        paced("engine", 1134.0, 211.0, 834.0),  # no no-op run at this rate: no line
        paced("noop", 810.0, 13.0, 35.2),
        paced("in-process", 1134.0, 40.0, 90.0),
    ]
    text = report(runs, "setup", tmp_path)
    assert "- 810/s: engine p50 / p99 55 / 599 ms, no-op p50 / p99 13 / 35 ms" in text
    assert "1,134/s: engine" not in text
    assert "not sustained" not in text
    runs.append(paced("in-process", 810.0, 30.0, 70.0))
    text = report(runs, "setup", tmp_path)
    assert (
        "- 810/s: engine p50 / p99 55 / 599 ms, in-process p50 / p99 30 / 70 ms, "
        "no-op p50 / p99 13 / 35 ms" in text
    )


def test_a_paced_run_that_fell_behind_its_rate_says_so(tmp_path: Path) -> None:
    # At the peak rate the queue grows for the whole run: its latency is the run's
    # length, and the report must not pass it off as a steady-load figure.
    behind = Run("engine", 1, "rate", 3000.0, 100, 100, 2217.0)
    behind.latency_ms = {"p50": 323.0, "p95": 1827.0, "p99": 1869.0}
    kept_up = Run("noop", 1, "rate", 3000.0, 100, 100, 2950.0)  # within 3 %: sustained
    kept_up.latency_ms = {"p50": 27.0, "p95": 73.0, "p99": 89.0}
    text = report([behind, kept_up], "setup", tmp_path)
    assert (
        "- 3,000/s: engine p50 / p99 323 / 1869 ms (not sustained: 2,217/s decided), "
        "no-op p50 / p99 27 / 89 ms" in text
    )
    assert "| engine | 1 | rate, not sustained | 3,000 |" in text
    assert "| noop | 1 | rate | 3,000 |" in text


def test_the_cpu_table_gives_each_runs_cost_per_decision_and_the_ceiling(tmp_path: Path) -> None:
    engine = Run("engine", 1, "peak", None, 1000, 1000, 2000.0)
    engine.cpu_us = {
        "workers": 300.0,
        "kafka": 100.0,
        "redis": 100.0,
        "load generator + collector": 50.0,
        "rest of machine": 10.0,
        "stolen by the hypervisor": 40.0,
    }
    engine.cpu_busy = 0.56
    unmetered = Run("noop", 1, "peak", None, 1000, 1000, 4000.0)  # e.g. an external stack
    text = report([engine, unmetered], "setup", tmp_path, cores=2)
    # 2 cores / (300 + 100 + 100 µs): the harness's own 50 µs is not a deployment's cost
    assert "| engine x1 peak | 2,000 | 300 | 100 | 100 | 50 | 10 | 40 | 56% | 4,000 |" in text
    assert "noop x1 peak" not in text
    assert "Where the CPU goes" not in report([unmetered], "setup", tmp_path, cores=2)


def test_the_report_counts_deadline_defaults_and_degraded_decisions(tmp_path: Path) -> None:
    # A rate reached by emitting the deadline's default is not a rate of decisions: the
    # report says how many of a run's decisions were defaults or degraded.
    got = Collected(seen=[(1_000 + i, 900, 950) for i in range(200)], timeout_defaults=3)
    got.degraded = 50
    run = summarise(got.counted(Run("engine", 1, "peak", None, 200, 0, 0.0)), got.seen, False)
    assert (run.decided, run.timeout_defaults, run.degraded) == (200, 3, 50)
    text = report([run], "setup", tmp_path)
    assert "| timeout defaults | degraded |" in text
    assert "| 3 (1.5 %) | 50 (25.0 %) |" in text
