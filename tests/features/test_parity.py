"""Online == offline, every row and every feature.

Transactions and labels are replayed in event order (labels at their label time, first
on ties) through the Redis store, micro-batch by micro-batch, and compared with the
offline builder run once over the whole history: counts equal, reals within 1e-9.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

from features.definitions import FEATURE_NAMES, HANDBOOK_FEATURE_NAMES, INTEGER_FEATURES
from features.offline import build_features
from features.online import RedisFeatureStore
from features.sources import (
    history_transactions,
    label_events,
    load_handbook,
    replay_order,
    simulated_tables,
)
from fraudstream.settings import load_settings
from fraudstream.simulator import SimulatorConfig, generate

HANDBOOK_HINT = (
    "handbook data not found at {path}: it is the public dataset of the Fraud Detection "
    "Handbook (github.com/Fraud-Detection-Handbook/simulated-data-raw, daily pickles, "
    "as one Parquet file); put transactions.parquet there or set "
    "FRAUDSTREAM__DATA__HANDBOOK_PATH"
)


def replay_online(
    store: RedisFeatureStore, history: pl.DataFrame, labels: pl.DataFrame, batch: int
) -> npt.NDArray[np.float64]:
    """Online features for every history row, in history row order."""
    rows: dict[str, npt.NDArray[np.float64]] = {}
    for kind, chunk in replay_order(history, labels, batch_size=batch):
        if kind == "labels":
            store.apply_labels(label_events(chunk))
            continue
        matrix = store.compute(history_transactions(chunk))
        for tx_id, row in zip(chunk["transaction_id"].to_list(), matrix.values, strict=True):
            rows[tx_id] = row
    return np.vstack([rows[i] for i in history["transaction_id"].to_list()])


def assert_parity(
    online: npt.NDArray[np.float64], offline: pl.DataFrame, names: tuple[str, ...]
) -> None:
    """Every row of every feature: NaN in the same places, integer-valued features
    exactly equal, reals within 1e-9."""
    problems = []
    for name in names:
        got = online[:, FEATURE_NAMES.index(name)]
        want = offline[name].to_numpy().astype(np.float64)
        nan_got, nan_want = np.isnan(got), np.isnan(want)
        if not np.array_equal(nan_got, nan_want):
            problems.append(f"{name}: NaN in {int((nan_got != nan_want).sum())} rows differ")
            continue
        if name in INTEGER_FEATURES:
            differ = ~nan_got & (got != want)
        else:
            differ = ~nan_got & ~np.isclose(got, want, rtol=1e-9, atol=1e-9)
        if differ.any():
            first = int(np.flatnonzero(differ)[0])
            problems.append(
                f"{name}: {int(differ.sum())} rows differ "
                f"(row {first}: online {got[first]!r}, offline {want[first]!r})"
            )
    assert not problems, "\n".join(problems)


@pytest.fixture
def handbook_path() -> Path:
    path = load_settings(None, {}).data.handbook_path
    if not path.exists():
        pytest.skip(HANDBOOK_HINT.format(path=path))
    return path


def test_handbook_31_days_online_equals_offline(
    handbook_path: Path, redis_client: Callable[..., Any]
) -> None:
    history, labels = load_handbook(handbook_path, start=date(2018, 4, 1), end=date(2018, 5, 2))
    assert history.height > 250_000
    offline = build_features(history, labels)
    store = RedisFeatureStore(redis_client(), key_prefix="hb", timeout_ms=30_000)
    online = replay_online(store, history, labels, batch=512)
    assert store.too_late == 0
    assert_parity(online, offline, FEATURE_NAMES)
    # the windows really were exercised: terminal risk is non-zero somewhere
    assert online[:, FEATURE_NAMES.index("terminal_risk_30d")].max() > 0
    # runs longer than the online script's first page of 4 events
    assert online[:, FEATURE_NAMES.index("terminal_fraud_streak")].max() > 4
    assert set(HANDBOOK_FEATURE_NAMES) <= set(FEATURE_NAMES)


def test_simulated_rich_fields_online_equals_offline(redis_client: Callable[..., Any]) -> None:
    data = generate(SimulatorConfig())
    history, labels = simulated_tables(data)
    offline = build_features(history, labels)
    store = RedisFeatureStore(redis_client(), key_prefix="sim", timeout_ms=30_000)
    online = replay_online(store, history, labels, batch=256)
    assert_parity(online, offline, FEATURE_NAMES)
    for name in ("device_distinct_cards_1h", "ip_distinct_cards_1h", "geo_speed_kmh"):
        column = online[:, FEATURE_NAMES.index(name)]
        assert np.nanmax(column) > 1, name  # the rich features carry signal here
