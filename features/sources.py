"""Adapters from the data we have to the canonical history and label tables
(:mod:`features.table`), and back to wire messages for replays through a store.

* The handbook benchmark (``settings.data.handbook_path``): :func:`load_handbook`.
  Its ground truth (``TX_FRAUD``, ``TX_FRAUD_SCENARIO``) is for evaluation only and so
  is returned by a separate function, :func:`handbook_outcomes`, never in the history.
* The simulator: :func:`simulated_tables`.
* Replays: :func:`replay_order` interleaves transactions and labels by time, the way a
  store sees them live (labels first on ties, so a label known at ``t`` counts for a
  transaction at ``t``), and :func:`history_transactions` / :func:`label_events` turn
  chunks back into messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import polars as pl

from features.definitions import LABEL_DELAY_MS
from features.table import HISTORY_SCHEMA, LABEL_SCHEMA
from fraudstream.simulator import SimulatedData
from fraudstream.wire.schemas import SCHEMA_VERSION, LabelEvent, LabelSource, Transaction

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HANDBOOK_COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)

Chunk = tuple[Literal["tx", "labels"], pl.DataFrame]


def from_epoch_ms(ms: int) -> datetime:
    """Exact inverse of :func:`features.table.epoch_ms` (no float on the way)."""
    return _EPOCH + timedelta(milliseconds=ms)


def _read_handbook(path: Path | str, start: date | None, end: date | None) -> pl.DataFrame:
    """Raw handbook rows with ``start <= TX_DATETIME's date < end`` (naive times are UTC),
    in transaction-id order."""
    frame = pl.scan_parquet(Path(path)).select(_HANDBOOK_COLUMNS)
    when = pl.col("TX_DATETIME")
    if start is not None:
        frame = frame.filter(when >= datetime(start.year, start.month, start.day))
    if end is not None:
        frame = frame.filter(when < datetime(end.year, end.month, end.day))
    return frame.sort("TRANSACTION_ID").collect()


def _transaction_ids(raw: pl.DataFrame) -> pl.Expr:
    # Zero-padded so that byte order (the event order's tie-breaker) is numeric order.
    return pl.col("TRANSACTION_ID").cast(pl.Utf8).str.zfill(10).alias("transaction_id")


def load_handbook(
    path: Path | str, start: date | None = None, end: date | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(history, labels) of the handbook between ``start`` (inclusive) and ``end``
    (exclusive) dates. Every transaction is labelled with ``TX_FRAUD``, known
    :data:`LABEL_DELAY_MS` after it happened, as the handbook's protocol assumes."""
    raw = _read_handbook(path, start, end)
    time_ms = pl.col("TX_DATETIME").dt.replace_time_zone("UTC").dt.epoch("ms").cast(pl.Int64)
    base = raw.select(
        _transaction_ids(raw),
        time_ms.alias("event_time_ms"),
        ("C" + pl.col("CUSTOMER_ID").cast(pl.Utf8)).alias("card_id"),
        ("T" + pl.col("TERMINAL_ID").cast(pl.Utf8)).alias("terminal_id"),
        pl.col("TX_AMOUNT").cast(pl.Float64).alias("amount"),
        pl.col("TX_FRAUD").cast(pl.Int8).alias("is_fraud"),
    )
    history = base.select(
        [
            pl.col(c).cast(d) if c in base.columns else pl.lit(None, dtype=d).alias(c)
            for c, d in HISTORY_SCHEMA.items()
        ]
    )
    labels = base.select(
        "transaction_id",
        "card_id",
        "terminal_id",
        pl.lit(None, dtype=pl.Utf8).alias("mcc"),
        "event_time_ms",
        (pl.col("event_time_ms") + LABEL_DELAY_MS).alias("label_time_ms"),
        "is_fraud",
    )
    return history, _as_labels(labels)


def handbook_outcomes(
    path: Path | str, start: date | None = None, end: date | None = None
) -> pl.DataFrame:
    """transaction_id, is_fraud, scenario: for evaluation only, never a feature."""
    raw = _read_handbook(path, start, end)
    return raw.select(
        _transaction_ids(raw),
        pl.col("TX_FRAUD").cast(pl.Int8).alias("is_fraud"),
        pl.col("TX_FRAUD_SCENARIO").cast(pl.Int8).alias("scenario"),
    )


def _as_labels(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select([pl.col(c).cast(d) for c, d in LABEL_SCHEMA.items()])


def _ms(column: pd.Series) -> npt.NDArray[np.int64]:
    times = pd.to_datetime(column, utc=True).dt.tz_localize(None)
    return np.asarray(times.to_numpy(dtype="datetime64[ms]").astype(np.int64))


def _strings(column: pd.Series) -> list[str | None]:
    return list(column.to_numpy(dtype=object, na_value=None))


def simulated_tables(data: SimulatedData) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(history, labels) of a simulation; labels carry their transaction's mcc."""
    tx = data.transactions
    history = pl.DataFrame(
        {
            "transaction_id": _strings(tx["transaction_id"]),
            "event_time_ms": _ms(tx["event_time"]),
            "card_id": _strings(tx["card_id"]),
            "terminal_id": _strings(tx["terminal_id"]),
            "amount": tx["amount"].to_numpy(dtype=np.float64),
            "device_id": _strings(tx["device_id"]),
            "ip": _strings(tx["ip"]),
            "mcc": _strings(tx["mcc"]),
            "latitude": tx["latitude"].to_numpy(dtype=np.float64, na_value=np.nan),
            "longitude": tx["longitude"].to_numpy(dtype=np.float64, na_value=np.nan),
        },
        schema=HISTORY_SCHEMA,
        nan_to_null=True,
    )
    lab = data.labels
    labels = pl.DataFrame(
        {
            "transaction_id": _strings(lab["transaction_id"]),
            "card_id": _strings(lab["card_id"]),
            "terminal_id": _strings(lab["terminal_id"]),
            "event_time_ms": _ms(lab["event_time"]),
            "label_time_ms": _ms(lab["label_time"]),
            "is_fraud": lab["is_fraud"].to_numpy().astype(np.int8),
        }
    ).join(history.select("transaction_id", "mcc"), on="transaction_id", how="left")
    return history, _as_labels(labels)


def history_transactions(history: pl.DataFrame, currency: str = "EUR") -> list[Transaction]:
    """The rows of a history table as wire transactions, in order."""
    return [
        Transaction(
            schema_version=SCHEMA_VERSION,
            transaction_id=row["transaction_id"],
            event_time=from_epoch_ms(row["event_time_ms"]),
            card_id=row["card_id"],
            terminal_id=row["terminal_id"],
            amount=row["amount"],
            currency=currency,
            device_id=row["device_id"],
            ip=row["ip"],
            mcc=row["mcc"],
            latitude=row["latitude"],
            longitude=row["longitude"],
        )
        for row in history.iter_rows(named=True)
    ]


def handbook_transactions(history: pl.DataFrame) -> list[Transaction]:
    """Handbook history rows as wire transactions (the handbook's amounts are in EUR)."""
    return history_transactions(history, "EUR")


def label_events(labels: pl.DataFrame, source: LabelSource = "chargeback") -> list[LabelEvent]:
    """The rows of a label table as wire label events, in order."""
    return [
        LabelEvent(
            schema_version=SCHEMA_VERSION,
            transaction_id=row["transaction_id"],
            card_id=row["card_id"],
            terminal_id=row["terminal_id"],
            event_time=from_epoch_ms(row["event_time_ms"]),
            label_time=from_epoch_ms(row["label_time_ms"]),
            is_fraud=bool(row["is_fraud"]),
            source=source,
            mcc=row["mcc"],
        )
        for row in labels.iter_rows(named=True)
    ]


def replay_order(
    history: pl.DataFrame, labels: pl.DataFrame | None = None, batch_size: int = 256
) -> Iterator[Chunk]:
    """``("tx", rows)`` and ``("labels", rows)`` chunks of at most ``batch_size`` rows, in
    time order: transactions by ``(event_time_ms, transaction_id)``, labels by
    ``label_time_ms`` (then table order), a label before a transaction at the same time.

    Feeding a store these chunks in order reproduces what the offline builder computes.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    tx = history.select(list(HISTORY_SCHEMA)).sort(["event_time_ms", "transaction_id"])
    lab = (labels if labels is not None else pl.DataFrame(schema=LABEL_SCHEMA)).select(
        list(LABEL_SCHEMA)
    )
    lab = lab.with_row_index("_row").sort(["label_time_ms", "_row"]).drop("_row")
    # Merge positions: kind 0 (label) sorts before kind 1 (transaction) at equal times.
    events = pl.concat(
        [
            pl.DataFrame(
                {
                    "time": lab["label_time_ms"],
                    "kind": pl.repeat(0, lab.height, dtype=pl.Int8, eager=True),
                    "index": pl.int_range(lab.height, dtype=pl.Int64, eager=True),
                }
            ),
            pl.DataFrame(
                {
                    "time": tx["event_time_ms"],
                    "kind": pl.repeat(1, tx.height, dtype=pl.Int8, eager=True),
                    "index": pl.int_range(tx.height, dtype=pl.Int64, eager=True),
                }
            ),
        ]
    ).sort(["time", "kind", "index"])
    kinds = events["kind"].to_numpy()
    index = events["index"].to_numpy()
    # Runs of one kind, then slices of each run (both tables are already in run order).
    breaks = np.flatnonzero(np.diff(kinds)) + 1
    for run_kinds, run_index in zip(np.split(kinds, breaks), np.split(index, breaks), strict=True):
        if len(run_kinds) == 0:
            continue
        table = lab if run_kinds[0] == 0 else tx
        name: Literal["tx", "labels"] = "labels" if run_kinds[0] == 0 else "tx"
        first = int(run_index[0])
        for offset in range(0, len(run_index), batch_size):
            size = min(batch_size, len(run_index) - offset)
            yield name, table.slice(first + offset, size)
