"""The demo's world and its engine: one simulation, a small engine trained on its start.

``fraudstream demo`` (:mod:`streams.demo`) and the end-to-end benchmark replay what
follows the training period; :func:`ensure_engine` trains the demo engine when there is
no engine at ``models.bundle_dir`` (or when the demo's own one predates the current
feature definitions) and makes it the MLflow registry's champion.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from fraudstream.errors import DefinitionsMismatchError, EngineBundleMissing
from fraudstream.settings import Settings

if TYPE_CHECKING:
    from fraudstream.simulator import SimulatedData
    from training.bundle import EngineInfo

# The demo world: one simulation; the engine learns on its first TRAIN_DAYS (layers on
# the first LAYER_DAYS, the meta-ensemble on the rest) and the replay is what follows.
DEMO_START = datetime(2025, 1, 1, tzinfo=UTC)
LAYER_DAYS = 12
TRAIN_DAYS = 20
REPLAY_DAYS = 2
# Labels arrive within LABEL_DELAY_DAYS in the demo world (real chargebacks take weeks,
# which would leave a three-week simulation with few known frauds to learn from).
LABEL_DELAY_DAYS = 3
DEMO_PREFIX = "demo:"


def demo_simulation(seed: int, *, n_cards: int = 500, n_terminals: int = 160) -> SimulatedData:
    from fraudstream.simulator import LabelConfig, SimulatorConfig, generate

    return generate(
        SimulatorConfig(
            seed=seed,
            n_cards=n_cards,
            n_terminals=n_terminals,
            days=TRAIN_DAYS + REPLAY_DAYS,
            start=DEMO_START.date(),
            fraud_rate=0.02,
            labels=LabelConfig(
                chargeback_delay_days=(1.0, LABEL_DELAY_DAYS - 0.5),
                investigator_delay_hours=(1.0, 48.0),
            ),
        )
    )


def train_demo_engine(
    data: SimulatedData, bundle_dir: Path, *, seed: int, progress: Any = None
) -> EngineInfo:
    """A small engine trained on the first :data:`TRAIN_DAYS` of ``data``."""
    import polars as pl

    from features.definitions import DAY_MS
    from features.sources import simulated_tables
    from training.engine import TrainingParams, train_engine

    history, labels = simulated_tables(data)
    train_end = DEMO_START + timedelta(days=TRAIN_DAYS)
    history = history.filter(pl.col("event_time_ms") < int(train_end.timestamp() * 1000))
    tx = data.transactions
    outcomes = pl.DataFrame(
        {
            "transaction_id": tx["transaction_id"].astype(str).tolist(),
            "is_fraud": tx["is_fraud"].to_numpy(),
        }
    )
    trained = train_engine(
        history,
        labels,
        outcomes,
        layers_until=DEMO_START + timedelta(days=LAYER_DAYS),
        ensemble_until=train_end,
        out_dir=bundle_dir,
        rules_file=Path(__file__).resolve().parent.parent / "config" / "rules.toml",
        params=TrainingParams.small(label_delay_ms=LABEL_DELAY_DAYS * DAY_MS),
        progress=progress,
        trained_on=f"{DEMO_PREFIX} simulator seed {seed}, {TRAIN_DAYS} days",
    )
    return trained.info


def ensure_engine(settings: Settings, data: SimulatedData, seed: int, console: Console) -> None:
    """Use the engine at ``models.bundle_dir``; train a demo one when there is none (or
    when the demo's own engine predates the current feature definitions)."""
    from training.bundle import read_engine_info

    bundle = settings.models.bundle_dir
    try:
        info = read_engine_info(bundle)
    except EngineBundleMissing:
        console.print(f"no trained engine at {bundle}: training a small demo engine first")
    except DefinitionsMismatchError as exc:
        stale = read_engine_info(bundle, check_definitions=False)
        if not stale.trained_on.startswith(DEMO_PREFIX):
            raise
        console.print(f"the demo engine is out of date ({exc.found}): training it again")
    else:
        console.print(f"engine {info.version} from {bundle} ({info.trained_on or 'trained'})")
        return
    started = time.monotonic()
    info = train_demo_engine(
        data, bundle, seed=seed, progress=lambda m: console.print(f"  [dim]training:[/dim] {m}")
    )
    console.print(
        f"trained engine {info.version} in {time.monotonic() - started:.0f} s "
        f"(ensemble AUC on its period: {info.metrics.get('ensemble', {}).get('roc_auc', 'n/a')})"
    )
    register_demo_engine(settings, info, console)


def register_demo_engine(settings: Settings, info: EngineInfo, console: Console) -> None:
    """Record the demo engine in the MLflow registry as the champion, so there is a run,
    a model version and an alias to look at (``mlflow ui``)."""
    from training.registry import RegistryConfig
    from training.registry_mlflow import MlflowRegistry

    bundle = settings.models.bundle_dir
    ensemble = info.metrics.get("ensemble", {})
    metrics = {f"ensemble_{k}": float(v) for k, v in ensemble.items() if isinstance(v, int | float)}
    try:
        registry = MlflowRegistry(RegistryConfig.from_settings(settings.mlflow))
        version = registry.register(
            bundle,
            metrics,
            {"trained_on": info.trained_on, "engine": info.version},
            info.definitions_hash,
            tags={"source": "fraudstream demo"},
        )
        registry.promote(version, actor="fraudstream demo", reason="demo engine", force=True)
    except Exception as exc:
        console.print(f"[yellow]not registered in MLflow:[/yellow] {exc}")
        return
    console.print(
        f"registered as {settings.mlflow.model_name} version {version} (@champion) in "
        f"{settings.mlflow.tracking_uri}; browse with "
        f"[bold]mlflow ui --backend-store-uri {settings.mlflow.tracking_uri}[/bold]"
    )
