"""Which rows train which part, labelled with what was known when: built by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from features.definitions import DAY_MS, HOUR_MS
from features.table import HISTORY_SCHEMA, LABEL_SCHEMA
from training.split import as_ms, known_labels, period_targets, training_periods

T0 = 1_700_000_000_000  # ms
CUTOFF = T0 + 10 * DAY_MS
DELAY = 2 * DAY_MS


def history(rows: list[tuple[str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "transaction_id": [r[0] for r in rows],
            "event_time_ms": [r[1] for r in rows],
            "card_id": ["c"] * len(rows),
            "terminal_id": ["t"] * len(rows),
            "amount": [1.0] * len(rows),
        }
    ).select(
        [
            pl.col(c).cast(d)
            if c in ("transaction_id", "event_time_ms", "card_id", "terminal_id", "amount")
            else pl.lit(None, dtype=d).alias(c)
            for c, d in HISTORY_SCHEMA.items()
        ]
    )


def labels(rows: list[tuple[str, int, int]]) -> pl.DataFrame:
    """(transaction id, label time, is_fraud) rows."""
    return pl.DataFrame(
        {
            "transaction_id": [r[0] for r in rows],
            "card_id": ["c"] * len(rows),
            "terminal_id": ["t"] * len(rows),
            "mcc": [None] * len(rows),
            "event_time_ms": [T0] * len(rows),
            "label_time_ms": [r[1] for r in rows],
            "is_fraud": [r[2] for r in rows],
        },
        schema=LABEL_SCHEMA,
    )


def test_layer_targets_use_only_labels_that_arrived_before_the_cutoff() -> None:
    h = history(
        [
            ("early-fraud", T0),  # fraud label before the cutoff -> 1
            ("late-fraud", T0 + HOUR_MS),  # fraud label at the cutoff -> not known -> 0
            ("relabelled", T0 + 2 * HOUR_MS),  # genuine, then fraud after the cutoff -> 0
            ("cleared", T0 + 3 * HOUR_MS),  # fraud, then cleared before the cutoff -> 0
            ("unlabelled", T0 + 4 * HOUR_MS),  # no label, mature -> 0
            ("young", CUTOFF - DELAY + 1),  # inside the label delay: left out
            ("young-known", CUTOFF - 1),  # even with a label already known
            ("after", CUTOFF),  # not in the period
        ]
    )
    lab = labels(
        [
            ("early-fraud", T0 + DAY_MS, 1),
            ("late-fraud", CUTOFF, 1),
            ("relabelled", T0 + DAY_MS, 0),
            ("relabelled", CUTOFF + DAY_MS, 1),
            ("cleared", T0 + DAY_MS, 1),
            ("cleared", T0 + 2 * DAY_MS, 0),
            ("young-known", CUTOFF - 1, 1),
        ]
    )
    periods = training_periods(CUTOFF, CUTOFF + 5 * DAY_MS, DELAY)
    rows, y = period_targets(h, lab, periods.layers)
    ids = h["transaction_id"].gather(rows).to_list()
    assert ids == ["early-fraud", "late-fraud", "relabelled", "cleared", "unlabelled"]
    assert y.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_ensemble_period_starts_at_layers_until_and_knows_labels_until_its_own_cutoff() -> None:
    ensemble_until = CUTOFF + 5 * DAY_MS
    h = history(
        [
            ("layer-row", CUTOFF - DELAY - 1),
            ("first", CUTOFF),
            ("last", ensemble_until - DELAY - 1),
            ("young", ensemble_until - DELAY),
        ]
    )
    lab = labels([("first", CUTOFF + DAY_MS, 1), ("last", ensemble_until, 1)])
    periods = training_periods(CUTOFF, ensemble_until, DELAY)
    rows, y = period_targets(h, lab, periods.ensemble)
    assert h["transaction_id"].gather(rows).to_list() == ["first", "last"]
    assert y.tolist() == [1.0, 0.0]  # "last" was labelled only at the cutoff itself
    assert periods.as_json()["layers"] == {
        "start_ms": None,
        "end_ms": CUTOFF - DELAY,
        "labels_known_before_ms": CUTOFF,
    }


def test_rows_come_back_in_event_order_whatever_the_table_order() -> None:
    h = history([("b", T0 + 5), ("a", T0 + 5), ("c", T0)])
    rows, _ = period_targets(
        h, labels([]), training_periods(CUTOFF, CUTOFF + 3 * DAY_MS, DELAY).layers
    )
    assert h["transaction_id"].gather(rows).to_list() == ["c", "a", "b"]


def test_known_labels_keeps_the_latest_known_verdict() -> None:
    lab = labels([("x", T0 + 2, 0), ("x", T0 + 1, 1), ("x", T0 + 9, 1)])
    assert known_labels(lab, T0 + 5).rows() == [("x", 0)]


def test_an_ensemble_period_shorter_than_the_label_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="ensemble period is empty"):
        training_periods(CUTOFF, CUTOFF + DELAY, DELAY)


def test_naive_datetimes_are_refused_and_aware_ones_are_exact() -> None:
    with pytest.raises(ValueError, match="time zone"):
        as_ms(datetime(2025, 1, 1))
    assert as_ms(datetime(1970, 1, 2, tzinfo=UTC)) == DAY_MS
