"""A small simulated world and a small trained engine, for the training and streams tests.

``small_world()`` is cached (the simulation is deterministic); ``train_small_engine(dir)``
trains into ``dir`` in a few seconds on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.definitions import DAY_MS, FEATURE_NAMES
from features.matrix import FeatureMatrix
from features.offline import build_features
from features.sources import history_transactions, simulated_tables
from fraudstream.settings import DEFAULT_CONFIG_FILE, Settings, load_settings
from fraudstream.simulator import LabelConfig, SimulatedData, SimulatorConfig, generate
from models.base import ScoringBatch
from training.engine import TrainedEngine, TrainingParams, train_engine

START = datetime(2025, 1, 1, tzinfo=UTC)
LAYERS_UNTIL = START + timedelta(days=6)
ENSEMBLE_UNTIL = START + timedelta(days=11)
DAYS = 12
LABEL_DELAY_MS = DAY_MS
RULES_FILE = DEFAULT_CONFIG_FILE.parent / "rules.toml"


@dataclass(frozen=True)
class SmallWorld:
    data: SimulatedData
    history: pl.DataFrame
    labels: pl.DataFrame
    outcomes: pl.DataFrame


@cache
def small_world(seed: int = 3) -> SmallWorld:
    # Labels arrive within the (short) label delay of these tests, so the periods'
    # known labels are close to the truth and the layers have something to learn.
    labels = LabelConfig(chargeback_delay_days=(0.2, 0.9), investigator_delay_hours=(1.0, 20.0))
    data = generate(
        SimulatorConfig(
            seed=seed,
            n_cards=300,
            n_terminals=100,
            days=DAYS,
            start=START.date(),
            fraud_rate=0.03,
            labels=labels,
        )
    )
    history, labels = simulated_tables(data)
    tx = data.transactions
    outcomes = pl.DataFrame(
        {
            "transaction_id": tx["transaction_id"].astype(str).tolist(),
            "is_fraud": tx["is_fraud"].to_numpy().astype(np.int8),
        }
    )
    return SmallWorld(data, history, labels, outcomes)


def small_params(**overrides: Any) -> TrainingParams:
    base = TrainingParams.small(label_delay_ms=LABEL_DELAY_MS, epochs=3)
    return base.model_copy(update=overrides) if overrides else base


def train_small_engine(
    out_dir: Path, world: SmallWorld | None = None, **options: Any
) -> TrainedEngine:
    world = world or small_world()
    kwargs: dict[str, Any] = {
        "layers_until": LAYERS_UNTIL,
        "ensemble_until": ENSEMBLE_UNTIL,
        "out_dir": out_dir,
        "rules_file": RULES_FILE,
        "params": small_params(),
    }
    kwargs.update(options)
    return train_engine(world.history, world.labels, world.outcomes, **kwargs)


def last_day_batch(rows: int = 200, world: SmallWorld | None = None) -> ScoringBatch:
    """Transactions of the world's last day (after both periods) with offline features."""
    world = world or small_world()
    features = build_features(world.history, world.labels)
    after = int(ENSEMBLE_UNTIL.timestamp() * 1000)
    chosen = (
        world.history.with_row_index("_row")
        .filter(pl.col("event_time_ms") >= after)
        .sort(["event_time_ms", "transaction_id"])
        .head(rows)
    )
    positions = chosen["_row"].to_list()
    values = features.select(FEATURE_NAMES).to_numpy()[positions]
    return ScoringBatch(
        history_transactions(chosen.drop("_row")),
        FeatureMatrix(FEATURE_NAMES, np.ascontiguousarray(values, dtype=np.float64)),
    )


def engine_settings(bundle_dir: Path, **env: str) -> Settings:
    """Unit settings for a bundle: generous deadline and layer budgets (a slow CI machine
    must not turn a layer into a breaker failure)."""
    values = {
        "FRAUDSTREAM__MODELS__BUNDLE_DIR": str(bundle_dir),
        "FRAUDSTREAM__SCORING__DEADLINE_MS": "60000",
        "FRAUDSTREAM__BREAKER__LATENCY_BUDGET_MS": "60000",
        "FRAUDSTREAM__BREAKER__LAYER_LATENCY_BUDGET_MS": '{"rules": 60000}',  # as generous
    }
    values.update(env)
    return load_settings(None, values)
