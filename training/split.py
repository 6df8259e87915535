"""Time splits for training: which rows train what, labelled with what was known when.

An engine is trained in two periods, like it would be in production:

* **layers** (XGBoost, isolation forest, GNN): rows with event time before
  ``layers_until``, labelled with the labels that had *arrived* before ``layers_until``;
* **ensemble** (the meta model): rows with ``layers_until <= t < ensemble_until``,
  labelled with the labels that had arrived before ``ensemble_until``.

A row whose label has not arrived counts as genuine only once it is *mature*: older
than the cutoff by ``label_delay_ms`` (frauds are reported within the delay). Younger
rows without a label are left out rather than guessed; younger rows with a label that
has already arrived are left out too, so that the early (mostly fraud) verdicts do not
inflate the fraud rate of the last days. So each period uses rows
``[start, until - label_delay_ms)``, and no label that arrived at or after ``until`` is
ever read (``tests/training/test_split.py`` holds both by construction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
import polars as pl

from features.table import epoch_ms


def as_ms(moment: datetime | int) -> int:
    """Milliseconds since the epoch of a timezone-aware datetime, or ``moment`` itself."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError(f"{moment} has no time zone; pass an aware datetime (UTC)")
        return epoch_ms(moment)
    return int(moment)


@dataclass(frozen=True)
class Period:
    """Rows with ``start_ms <= event_time_ms < end_ms`` (``start_ms`` None: from the first
    row), labelled with the labels that arrived before ``labels_known_before_ms``."""

    start_ms: int | None
    end_ms: int
    labels_known_before_ms: int

    def mask(self, event_time_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        after = True if self.start_ms is None else event_time_ms >= self.start_ms
        return np.asarray(after & (event_time_ms < self.end_ms), dtype=np.bool_)

    def as_json(self) -> dict[str, int | None]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "labels_known_before_ms": self.labels_known_before_ms,
        }


@dataclass(frozen=True)
class TrainingPeriods:
    layers: Period
    ensemble: Period
    label_delay_ms: int

    def as_json(self) -> dict[str, object]:
        return {
            "layers": self.layers.as_json(),
            "ensemble": self.ensemble.as_json(),
            "label_delay_ms": self.label_delay_ms,
        }


def training_periods(
    layers_until: datetime | int, ensemble_until: datetime | int, label_delay_ms: int
) -> TrainingPeriods:
    layers_ms, ensemble_ms = as_ms(layers_until), as_ms(ensemble_until)
    if label_delay_ms < 0:
        raise ValueError("label_delay_ms must not be negative")
    if ensemble_ms - label_delay_ms <= layers_ms:
        raise ValueError(
            "the ensemble period is empty: ensemble_until must be more than the label "
            f"delay ({label_delay_ms} ms) after layers_until"
        )
    return TrainingPeriods(
        layers=Period(None, layers_ms - label_delay_ms, layers_ms),
        ensemble=Period(layers_ms, ensemble_ms - label_delay_ms, ensemble_ms),
        label_delay_ms=label_delay_ms,
    )


def known_labels(labels: pl.DataFrame, known_before_ms: int) -> pl.DataFrame:
    """``transaction_id, is_fraud`` of the labels that arrived before ``known_before_ms``;
    a later label of the same transaction replaces an earlier one."""
    return (
        labels.filter(pl.col("label_time_ms") < known_before_ms)
        .with_row_index("_row")
        .sort(["label_time_ms", "_row"])
        .group_by("transaction_id", maintain_order=True)
        .agg(pl.col("is_fraud").last())
        .select("transaction_id", pl.col("is_fraud").cast(pl.Int8))
    )


def period_targets(
    history: pl.DataFrame, labels: pl.DataFrame, period: Period
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(row positions in ``history`` in event order, 0/1 targets) of ``period``: a known
    fraud label gives 1, anything else 0."""
    t = history["event_time_ms"].to_numpy().astype(np.int64)
    chosen = (
        history.select("transaction_id", "event_time_ms")
        .with_row_index("_row")
        .filter(pl.Series(period.mask(t)))
        .sort(["event_time_ms", "transaction_id"])
    )
    known = known_labels(labels, period.labels_known_before_ms)
    joined = chosen.join(known, on="transaction_id", how="left", maintain_order="left")
    rows = joined["_row"].to_numpy().astype(np.int64)
    targets = joined["is_fraud"].fill_null(0).to_numpy().astype(np.float32)
    return rows, targets
