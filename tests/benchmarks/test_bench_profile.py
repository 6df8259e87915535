"""The profile benchmark's summary and report, from a made-up span and profile."""

from __future__ import annotations

import argparse

from benchmarks.bench_profile import Span, report, summary
from benchmarks.profile_parts import DECIDER, WORKER, ProcessProfile


def made_up(last_decision_ms: int) -> dict[str, object]:
    worker = ProcessProfile(100, WORKER, samples=10)
    worker.parts.update({"dedupe (table lookups, changelog)": 2, "event loop and threads": 8})
    child = ProcessProfile(101, DECIDER, samples=5)
    child.parts.update({"features (Redis script round trip)": 5})
    # 2,000 decisions a second from t = 0 s; the span is 10 s to 20 s.
    seen = [(t, t - 50, t - 10) for t in range(0, last_decision_ms, 1)][::2]
    span = Span(10.0, 20.0, {100: 4.0, 101: 1.0, 7: 2.0}, {7: "Redis"})
    args = argparse.Namespace(hz=100, warmup_s=5.0)
    return summary(seen, span, {100: worker, 101: child}, len(seen), args)


def test_only_the_decisions_of_the_sampled_span_count() -> None:
    result = made_up(last_decision_ms=30_000)
    assert result["span_decisions"] == 10_001 // 2 + 1
    assert not result["ended_early"]
    rows = {row["process"]: row for row in result["processes"]}  # type: ignore[attr-defined]
    per = 1e6 / result["span_decisions"]  # type: ignore[operator]
    assert rows[WORKER]["cpu_us_per_decision"] == 4.0 * per
    assert rows["Redis"]["cpu_us_per_decision"] == 2.0 * per
    dedupe = rows[WORKER]["parts_us_per_decision"]["dedupe (table lookups, changelog)"]
    assert dedupe == 0.2 * 4.0 * per


def test_the_report_names_each_process_its_parts_and_the_ceiling() -> None:
    text = report(made_up(last_decision_ms=30_000))
    assert "| worker (Faust process) | 100 | 800 | 10 | 0 |" in text
    assert "| Redis | 7 | 400 | - | - |" in text
    assert "| **all of these** | | **1,400** | | |" in text
    assert "| features (Redis script round trip) | 200.0 | 100% |" in text
    assert "ended inside the sampled span" not in text


def test_a_drain_that_ended_inside_the_span_is_flagged() -> None:
    result = made_up(last_decision_ms=15_000)
    assert result["ended_early"]
    assert "ended inside the sampled span" in report(result)
