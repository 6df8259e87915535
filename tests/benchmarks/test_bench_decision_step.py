"""The decision-step report's arithmetic: parts per batch and the fixed / per-transaction
split of the step's time."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_decision_step import (
    StepCost,
    fixed_and_per_transaction,
    parts_from_samples,
    report,
)


def test_a_line_through_the_step_times_splits_fixed_and_per_transaction_costs() -> None:
    # 7 ms per batch + 165 µs per transaction, exactly
    costs = [StepCost(n, 10, 7.0 + 0.165 * n, {"rest": 0.0}) for n in (8, 33, 80, 256)]
    fixed, per_tx = fixed_and_per_transaction(costs)
    assert fixed == pytest.approx(7.0) and per_tx == pytest.approx(165.0)


def test_parts_are_means_per_batch_and_the_rest_is_what_they_leave() -> None:
    before = {"features": 1.0, "xgboost": 0.5}
    after = {"features": 1.2, "xgboost": 0.52, "rules": 0.1}  # rules ran first this time
    parts = parts_from_samples(before, after, batches=10, step_ms=40.0)
    assert parts["features"] == pytest.approx(20.0)  # 0.2 s over 10 batches
    assert parts["xgboost"] == pytest.approx(2.0)
    assert parts["rules"] == pytest.approx(10.0)
    assert parts["rest"] == pytest.approx(8.0)


def test_the_report_lists_every_part_features_first(tmp_path: Path) -> None:
    costs = [
        StepCost(8, 20, 8.32, {"features": 2.0, "rules": 3.0, "xgboost": 0.5, "rest": 2.82}),
        StepCost(80, 20, 20.2, {"features": 9.0, "rules": 4.0, "xgboost": 1.0, "rest": 6.2}),
    ]
    text = report(costs, "setup", tmp_path)
    assert "| batch | step ms | per transaction µs | features ms | rules ms | xgboost ms |" in text
    assert "| 8 | 8.32 | 1040 | 2.00 | 3.00 | 0.50 | 2.82 |" in text
    assert "7.0 ms per batch + 165 µs per transaction" in text
    assert (tmp_path / "decision_step.json").exists()
