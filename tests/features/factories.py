"""Builders shared by the feature-store tests: small history / label tables, a replay of
them through the in-memory twin, and a comparison that reports the first differing row.

Times are integer milliseconds from :data:`T0` (a Monday, 00:00 UTC), so windows edges
and UTC day boundaries fall on round offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from features.definitions import DAY_MS, FEATURE_NAMES, INTEGER_FEATURES
from features.offline import build_features
from features.sources import history_transactions, label_events, replay_order
from features.table import HISTORY_SCHEMA, LABEL_SCHEMA, epoch_ms
from features.twin import InMemoryFeatureStore

F64 = npt.NDArray[np.float64]

T0 = epoch_ms(datetime(2026, 3, 2, tzinfo=UTC))  # Monday 2026-03-02 00:00 UTC
assert T0 % DAY_MS == 0
NAN = float("nan")


def tx(
    id_: str,
    t: int,
    *,
    card: str = "c1",
    terminal: str = "T1",
    amount: float = 10.0,
    device: str | None = None,
    ip: str | None = None,
    mcc: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
) -> dict[str, Any]:
    """One history row; ``t`` is absolute epoch milliseconds."""
    return {
        "transaction_id": id_,
        "event_time_ms": t,
        "card_id": card,
        "terminal_id": terminal,
        "amount": amount,
        "device_id": device,
        "ip": ip,
        "mcc": mcc,
        "latitude": lat,
        "longitude": lon,
    }


def label(row: Mapping[str, Any], label_time: int, fraud: bool) -> dict[str, Any]:
    """A label of history row ``row`` known at ``label_time`` (absolute ms)."""
    return {
        "transaction_id": row["transaction_id"],
        "card_id": row["card_id"],
        "terminal_id": row["terminal_id"],
        "mcc": row["mcc"],
        "event_time_ms": row["event_time_ms"],
        "label_time_ms": label_time,
        "is_fraud": int(fraud),
    }


def history(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=HISTORY_SCHEMA)


def labels(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=LABEL_SCHEMA)


def replay_twin(
    hist: pl.DataFrame,
    labs: pl.DataFrame | None = None,
    batch_size: int = 256,
    store: InMemoryFeatureStore | None = None,
) -> F64:
    """Twin features of every history row, in history row order, from a replay of the
    history and labels in event order (:func:`features.sources.replay_order`)."""
    store = store if store is not None else InMemoryFeatureStore()
    rows: dict[str, F64] = {}
    for kind, chunk in replay_order(hist, labs, batch_size=batch_size):
        if kind == "labels":
            store.apply_labels(label_events(chunk))
            continue
        matrix = store.compute(history_transactions(chunk))
        assert matrix.names == FEATURE_NAMES
        for tx_id, row in zip(chunk["transaction_id"].to_list(), matrix.values, strict=True):
            rows[tx_id] = row
    if hist.height == 0:
        return np.empty((0, len(FEATURE_NAMES)))
    return np.vstack([rows[i] for i in hist["transaction_id"].to_list()])


def offline_matrix(hist: pl.DataFrame, labs: pl.DataFrame | None = None) -> F64:
    frame = build_features(hist, labs)
    assert frame["transaction_id"].to_list() == hist["transaction_id"].to_list()
    if hist.height == 0:
        return np.empty((0, len(FEATURE_NAMES)))
    return np.column_stack([frame[n].to_numpy().astype(np.float64) for n in FEATURE_NAMES])


def differences(
    got: F64, want: F64, names: Sequence[str] = FEATURE_NAMES, ids: Sequence[str] | None = None
) -> list[str]:
    """Per feature, what differs: NaN positions, integer features exactly, reals beyond
    1e-9 (relative and absolute)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    problems = []
    for name in names:
        j = FEATURE_NAMES.index(name)
        g, w = got[:, j], want[:, j]
        nan_g, nan_w = np.isnan(g), np.isnan(w)
        ok = ~nan_g & ~nan_w
        bad = nan_g != nan_w
        if name in INTEGER_FEATURES:
            bad[ok] = g[ok] != w[ok]
        else:
            bad[ok] = ~np.isclose(g[ok], w[ok], rtol=1e-9, atol=1e-9)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            where = f"row {r}" + (f" ({ids[r]})" if ids is not None else "")
            problems.append(f"{name}: {int(bad.sum())} rows differ, {where}: {g[r]!r} vs {w[r]!r}")
    return problems


def assert_same(
    got: F64, want: F64, names: Sequence[str] = FEATURE_NAMES, ids: Sequence[str] | None = None
) -> None:
    problems = differences(got, want, names, ids)
    assert not problems, "\n".join(problems)
