"""Synthetic transactions and fitted learned scorers for the scorer contract suite.

``FACTORIES`` maps a scorer name to a callable taking a scratch directory and returning
a fitted scorer. ``tests/models/factories_rules.py`` (rules, ensemble) exposes the same
mapping; the contract suite runs against both.

The synthetic world plants three kinds of fraud the layers should find: a ring of
cards sharing a few devices and IPs, two terminals compromised in the second half,
and amounts far above the card's usual one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import SCHEMA_VERSION, Transaction
from models.base import Scorer, ScoringBatch
from models.gnn import GNNConfig, GNNScorer
from models.iforest import IsolationForestParams, IsolationForestScorer
from models.xgb import XGBoostParams, XGBoostScorer

CONTRACT_FEATURES: tuple[str, ...] = (
    "amount",
    "amount_to_card_mean_30d",
    "card_tx_count_1d",
    "card_mean_amount_7d",
    "terminal_fraud_rate_7d",
    "device_card_count_7d",
    "is_night",
)
START = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class World:
    transactions: pd.DataFrame  # transaction_id, event_time, entity ids, amount, is_fraud
    features: FeatureMatrix  # row-aligned with transactions
    labels: npt.NDArray[np.int64]
    ring_devices: frozenset[str]
    compromised_terminals: frozenset[str]


def synthetic_world(
    rows: int,
    *,
    seed: int = 0,
    days: float = 20.0,
    cards: int = 200,
    terminals: int = 40,
    ring_cards: int = 12,
    ring_share: float = 0.7,
    start: datetime = START,
) -> World:
    """``rows`` transactions over ``days`` from ``cards`` cards; fraud is planted."""
    rng = np.random.default_rng(seed)
    card = rng.integers(0, cards, rows)
    offsets = pd.to_timedelta(np.sort(rng.uniform(0, days, rows)), unit="D").floor("ms")
    event_time = start + offsets
    # Each card has its own device and IP; ring cards share three devices and two IPs.
    ring = card < ring_cards
    device = np.where(ring, rng.integers(0, 3, rows), 100 + card)
    ip = np.where(ring, rng.integers(0, 2, rows), 100 + card // 2)
    terminal = rng.integers(0, terminals, rows)
    card_mean = 20.0 + 80.0 * (card % 7) / 6.0
    ratio = rng.lognormal(0.0, 0.35, rows)
    spike = rng.random(rows) < 0.02
    ratio[spike] *= rng.uniform(4.0, 8.0, spike.sum())
    amount = np.round(card_mean * ratio, 2)
    elapsed = (event_time - start) / pd.Timedelta(days=1)
    compromised = (terminal < 2) & (elapsed > days / 2)

    p_fraud = np.full(rows, 0.005)
    p_fraud[ring] = ring_share
    p_fraud[compromised] = np.maximum(p_fraud[compromised], 0.6)
    p_fraud[spike] = np.maximum(p_fraud[spike], 0.7)
    labels = (rng.random(rows) < p_fraud).astype(np.int64)

    hour = np.asarray(event_time.hour)
    values = np.column_stack(
        [
            amount,
            ratio,
            rng.poisson(np.where(labels == 1, 3.0, 1.0)).astype(np.float64),
            card_mean * rng.lognormal(0.0, 0.1, rows),
            np.where(compromised, 0.3, 0.0) + rng.uniform(0.0, 0.05, rows),
            np.where(ring, ring_cards / 3, 1.0) + rng.poisson(0.3, rows),
            ((hour < 6) | (hour >= 23)).astype(np.float64),
        ]
    )
    transactions = pd.DataFrame(
        {
            "transaction_id": [f"tx-{seed}-{i}" for i in range(rows)],
            "event_time": event_time,
            "card_id": [f"card_{c:04d}" for c in card],
            "terminal_id": [f"term_{t:03d}" for t in terminal],
            "merchant_id": [f"m_{t // 4:03d}" for t in terminal],
            "device_id": [f"dev_{d:04d}" for d in device],
            "ip": [f"10.0.{i // 250}.{i % 250}" for i in ip],
            "amount": amount,
            "is_fraud": labels,
        }
    )
    return World(
        transactions,
        FeatureMatrix(CONTRACT_FEATURES, values),
        labels,
        frozenset(f"dev_{d:04d}" for d in range(3)),
        frozenset(f"term_{t:03d}" for t in range(2)),
    )


def wire_transactions(frame: pd.DataFrame) -> list[Transaction]:
    return [
        Transaction(
            schema_version=SCHEMA_VERSION,
            transaction_id=str(row.transaction_id),
            event_time=row.event_time.to_pydatetime(),
            card_id=str(row.card_id),
            terminal_id=str(row.terminal_id),
            amount=float(row.amount),
            currency="EUR",
            merchant_id=_optional(getattr(row, "merchant_id", None)),
            device_id=_optional(getattr(row, "device_id", None)),
            ip=_optional(getattr(row, "ip", None)),
            channel="ecom",
        )
        for row in frame.itertuples(index=False)
    ]


def _optional(value: object) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def batch_from_world(
    world: World, rows: slice | npt.NDArray[np.int64] | None = None
) -> ScoringBatch:
    frame = world.transactions if rows is None else world.transactions.iloc[rows]
    values = world.features.values if rows is None else world.features.values[rows]
    return ScoringBatch(wire_transactions(frame), FeatureMatrix(world.features.names, values))


def make_batch(rows: int, *, seed: int = 99, missing: float = 0.0) -> ScoringBatch:
    """A scoring batch shortly after the training worlds end: mostly known entities,
    some never seen (new cards), and a share ``missing`` of feature values set to NaN."""
    world = synthetic_world(
        max(rows, 1), seed=seed, days=1.0, cards=260, start=START + timedelta(days=20)
    )
    batch = batch_from_world(world, slice(0, rows))
    if missing <= 0 or rows == 0:
        return batch
    rng = np.random.default_rng(seed)
    values = batch.features.values.copy()
    values[rng.random(values.shape) < missing] = np.nan
    return ScoringBatch(batch.transactions, FeatureMatrix(batch.features.names, values))


# --- fitted scorers ------------------------------------------------------------------------

_TRAIN_ROWS = 3000


def fit_xgboost(_: Path) -> Scorer:
    world = synthetic_world(_TRAIN_ROWS, seed=1)
    return XGBoostScorer.fit(world.features, world.labels, params=XGBoostParams(n_estimators=40))


def fit_bagged_xgboost(_: Path) -> Scorer:
    world = synthetic_world(_TRAIN_ROWS, seed=1)
    params = XGBoostParams(n_estimators=20, bags=3, negatives_per_positive=5)
    return XGBoostScorer.fit(world.features, world.labels, params=params)


def fit_iforest(_: Path) -> Scorer:
    world = synthetic_world(_TRAIN_ROWS, seed=2)
    return IsolationForestScorer.fit(world.features, params=IsolationForestParams(n_estimators=50))


def small_gnn_config(**overrides: object) -> GNNConfig:
    base: dict[str, object] = {
        "history_days": 20.0,
        "label_delay_days": 2.0,
        "train_snapshots": 4,
        "epochs": 40,
        "hidden_dim": 16,
        "embedding_dim": 8,
        "head_hidden": 16,
    }
    return GNNConfig.model_validate(base | overrides)


def fit_gnn(_: Path) -> Scorer:
    world = synthetic_world(_TRAIN_ROWS, seed=3)
    return GNNScorer.fit(
        world.transactions, world.features, world.labels, config=small_gnn_config(epochs=15)
    )


FACTORIES: dict[str, Callable[[Path], Scorer]] = {
    "xgboost": fit_xgboost,
    "xgboost-bagged": fit_bagged_xgboost,
    "iforest": fit_iforest,
    "gnn": fit_gnn,
}
