"""The canonical columnar form of transactions and labels that every feature
implementation reads: the online store's argument builder, the offline builder (a
history table) and the in-memory twin.

History table (polars), one row per transaction:

==================  =======  ====================================================
column              dtype    meaning
==================  =======  ====================================================
transaction_id      Utf8     unique; the tie-breaker of the event order
event_time_ms       Int64    event time, ms since the Unix epoch, UTC
card_id             Utf8
terminal_id         Utf8
amount              Float64  major units
device_id, ip, mcc  Utf8     null when absent
latitude/longitude  Float64  null when absent
==================  =======  ====================================================

Label table: transaction_id, card_id, terminal_id, mcc (nullable), event_time_ms (of
the transaction), label_time_ms, is_fraud (Int8).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import polars as pl

from features.definitions import AMOUNT_SCALE, DAY_MS, HOUR_MS, TRANSACTION_ONLY_NAMES
from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import LabelEvent, Transaction

HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.Utf8(),
    "event_time_ms": pl.Int64(),
    "card_id": pl.Utf8(),
    "terminal_id": pl.Utf8(),
    "amount": pl.Float64(),
    "device_id": pl.Utf8(),
    "ip": pl.Utf8(),
    "mcc": pl.Utf8(),
    "latitude": pl.Float64(),
    "longitude": pl.Float64(),
}
LABEL_SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.Utf8(),
    "card_id": pl.Utf8(),
    "terminal_id": pl.Utf8(),
    "mcc": pl.Utf8(),
    "event_time_ms": pl.Int64(),
    "label_time_ms": pl.Int64(),
    "is_fraud": pl.Int8(),
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Exact integer milliseconds (``timestamp()`` goes through a float)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000 + delta.microseconds // 1_000


def amount_milli(amount: float) -> int:
    return round(amount * AMOUNT_SCALE)


def history_frame(transactions: Sequence[Transaction]) -> pl.DataFrame:
    """The history table of decoded transactions, in the order given."""
    return pl.DataFrame(
        {
            "transaction_id": [t.transaction_id for t in transactions],
            "event_time_ms": [epoch_ms(t.event_time) for t in transactions],
            "card_id": [t.card_id for t in transactions],
            "terminal_id": [t.terminal_id for t in transactions],
            "amount": [t.amount for t in transactions],
            "device_id": [t.device_id for t in transactions],
            "ip": [t.ip for t in transactions],
            "mcc": [t.mcc for t in transactions],
            "latitude": [t.latitude for t in transactions],
            "longitude": [t.longitude for t in transactions],
        },
        schema=HISTORY_SCHEMA,
    )


def label_frame(labels: Sequence[LabelEvent]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "transaction_id": [x.transaction_id for x in labels],
            "card_id": [x.card_id for x in labels],
            "terminal_id": [x.terminal_id for x in labels],
            "mcc": [x.mcc for x in labels],
            "event_time_ms": [epoch_ms(x.event_time) for x in labels],
            "label_time_ms": [epoch_ms(x.label_time) for x in labels],
            "is_fraud": [int(x.is_fraud) for x in labels],
        },
        schema=LABEL_SCHEMA,
    )


def calendar_flags(
    event_time_ms: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(weekend, night) as 0/1 floats from UTC event times."""
    days = np.floor_divide(event_time_ms, DAY_MS)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    hour = np.floor_divide(event_time_ms - days * DAY_MS, HOUR_MS)
    return (weekday >= 5).astype(np.float64), (hour <= 6).astype(np.float64)


def transaction_only(transactions: Sequence[Transaction]) -> FeatureMatrix:
    """The features that need no store: what scoring falls back to when it is down."""
    times = np.fromiter((epoch_ms(t.event_time) for t in transactions), np.int64, len(transactions))
    amounts = np.fromiter((t.amount for t in transactions), np.float64, len(transactions))
    weekend, night = calendar_flags(times)
    columns = {"amount": amounts, "tx_during_weekend": weekend, "tx_during_night": night}
    values = (
        np.column_stack([columns[n] for n in TRANSACTION_ONLY_NAMES])
        if len(transactions)
        else np.empty((0, len(TRANSACTION_ONLY_NAMES)))
    )
    return FeatureMatrix(TRANSACTION_ONLY_NAMES, np.ascontiguousarray(values, dtype=np.float64))
