"""From the transactions frame to the wire: ``Transaction`` structs and JSON values.

:func:`to_json_lines` builds a mirror of the wire struct whose ``event_time`` is a
pre-formatted RFC 3339 string (formatted for the whole column at once by numpy), so
msgspec encodes each row without creating a ``datetime``; the result decodes with
:func:`fraudstream.wire.transaction_decoder` like any producer's message. Missing
optional fields are left out of the JSON, which the schema allows.
"""

from __future__ import annotations

import math
from itertools import repeat
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from fraudstream.wire.schemas import SCHEMA_VERSION, Transaction


class _WireTransaction(msgspec.Struct, omit_defaults=True, gc=False):
    """Field for field the wire ``Transaction``, with the time already formatted."""

    schema_version: int
    transaction_id: str
    event_time: str
    card_id: str
    terminal_id: str
    amount: float
    currency: str
    merchant_id: str | None = None
    device_id: str | None = None
    ip: str | None = None
    country: str | None = None
    mcc: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    channel: str | None = None


_FIELDS = tuple(
    f for f in _WireTransaction.__struct_fields__ if f not in ("schema_version", "event_time")
)
_OPTIONAL_FLOATS = ("latitude", "longitude")
_encoder = msgspec.json.Encoder()


def _strings(column: pd.Series) -> list[Any]:
    return list(column.to_numpy(dtype=object, na_value=None))


def _floats(column: pd.Series) -> list[Any]:
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(values).any():
        return [None if math.isnan(v) else v for v in values.tolist()]
    return list(values.tolist())


def _columns(df: pd.DataFrame) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for name in _FIELDS:
        if name not in df.columns:
            out[name] = [None] * len(df)
        elif name == "amount" or name in _OPTIONAL_FLOATS:
            out[name] = _floats(df[name])
        else:
            out[name] = _strings(df[name])
    return out


def _utc_naive(df: pd.DataFrame) -> npt.NDArray[np.datetime64]:
    times = pd.to_datetime(df["event_time"], utc=True).dt.tz_localize(None)
    return np.asarray(times.to_numpy(dtype="datetime64[ns]"), dtype="datetime64[ns]")


def _rfc3339(df: pd.DataFrame) -> list[str]:
    naive = _utc_naive(df)
    ns = naive.view(np.int64)
    # Millisecond precision when nothing finer is there (as generated), microseconds else.
    unit: Literal["ms", "us"] = "ms" if not (ns % 1_000_000).any() else "us"
    return list(np.datetime_as_string(naive, unit=unit, timezone="UTC").tolist())


def to_json_lines(df: pd.DataFrame) -> list[bytes]:
    """One JSON message per row, in the wire ``Transaction`` schema (version 1)."""
    if len(df) == 0:
        return []
    cols = _columns(df)
    structs = list(
        map(
            _WireTransaction,
            repeat(SCHEMA_VERSION),
            cols["transaction_id"],
            _rfc3339(df),
            *(cols[name] for name in _FIELDS[1:]),
        )
    )
    return list(map(_encoder.encode, structs))


def to_transactions(df: pd.DataFrame) -> list[Transaction]:
    """The rows as wire ``Transaction`` structs (as the engine holds them after decoding)."""
    if len(df) == 0:
        return []
    cols = _columns(df)
    times = pd.to_datetime(df["event_time"], utc=True).dt.tz_convert("UTC")
    when = list(times.array.to_pydatetime())
    rows = zip(cols["transaction_id"], when, *(cols[name] for name in _FIELDS[1:]), strict=True)
    return [
        Transaction(
            schema_version=SCHEMA_VERSION,
            transaction_id=tx,
            event_time=at,
            card_id=card,
            terminal_id=term,
            amount=amount,
            currency=cur,
            merchant_id=merchant,
            device_id=device,
            ip=ip,
            country=ctry,
            mcc=mcc,
            latitude=lat,
            longitude=lon,
            channel=chan,
        )
        for tx, at, card, term, amount, cur, merchant, device, ip, ctry, mcc, lat, lon, chan in rows
    ]
