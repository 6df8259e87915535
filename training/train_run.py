"""``fraudstream train`` as a function: load data, train the engine, assess it on a later
test period, log everything to the registry as one model version.

The test period starts at ``ensemble_until``, when the engine would go live: it only
ever knew the labels that had arrived by then (``training.split``), and the payments
between the meta model's last row and ``ensemble_until`` (the label delay) are in no
period. Cards already known compromised (a fraud label on them had arrived before the
test day) are dropped from each test day, as the handbook's protocol does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from features.definitions import DAY_MS
from fraudstream.settings import Settings
from training.engine import TrainedEngine, TrainingParams, train_engine
from training.evaluate import (
    ENGINE,
    VARIANTS,
    Say,
    Window,
    WindowTooSmall,
    ablation_scores,
    assessed_rows,
    window_metrics,
)
from training.evaluate_protocols import midnight_ms, prepare
from training.plots import evaluation_plots
from training.registry import ModelRegistry, RegistryConfig

CONTRIBUTIONS_FILE = "layer_contributions.png"
Source = Literal["handbook", "simulated"]


@dataclass(frozen=True)
class TrainRequest:
    source: Source
    start: date
    layers_until: date
    ensemble_until: date
    test_until: date
    data_path: Path | None = None  # the handbook parquet
    small: bool = False
    seed: int = 7
    cards: int = 2000
    terminals: int = 800
    fraud_rate: float = 0.02

    def __post_init__(self) -> None:
        if not self.start < self.layers_until < self.ensemble_until < self.test_until:
            raise ValueError(
                "dates must be in order: start < layers-until < ensemble-until < test-until, "
                f"got {self.start}, {self.layers_until}, {self.ensemble_until}, {self.test_until}"
            )
        if self.source == "handbook" and self.data_path is None:
            raise ValueError("the handbook source needs data_path")


@dataclass(frozen=True)
class TrainOutcome:
    version: int
    trained: TrainedEngine
    metrics: dict[str, float]
    plots: list[str]  # file names logged under the run's plots/


def load_source(request: TrainRequest, say: Say) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(history, labels, truth) with ``truth`` = transaction_id, is_fraud, category."""
    if request.source == "handbook":
        from features.sources import handbook_outcomes, load_handbook

        assert request.data_path is not None
        say(f"loading the handbook {request.start} to {request.test_until}")
        history, labels = load_handbook(request.data_path, request.start, request.test_until)
        truth = handbook_outcomes(request.data_path, request.start, request.test_until)
        return history, labels, truth.rename({"scenario": "category"})
    from features.sources import simulated_tables
    from fraudstream.simulator import SimulatorConfig, generate

    days = (request.test_until - request.start).days
    say(f"simulating {days} days of {request.cards} cards (seed {request.seed})")
    sim = generate(
        SimulatorConfig(
            seed=request.seed,
            n_cards=request.cards,
            n_terminals=request.terminals,
            days=days,
            start=request.start,
            fraud_rate=request.fraud_rate,
        )
    )
    history, labels = simulated_tables(sim)
    tx = sim.transactions
    truth = pl.DataFrame(
        {
            "transaction_id": tx["transaction_id"].astype(str).tolist(),
            "is_fraud": tx["is_fraud"].to_numpy().astype(np.int8),
            "category": tx["attack"].astype(str).tolist(),
        }
    )
    return history, labels, truth


def training_params(request: TrainRequest) -> TrainingParams:
    if request.small:
        return TrainingParams.small(label_delay_ms=7 * DAY_MS)
    return TrainingParams()


def flat_params(request: TrainRequest, params: TrainingParams) -> dict[str, object]:
    out: dict[str, object] = {
        "source": request.source,
        "data_path": str(request.data_path or ""),
        "start": request.start.isoformat(),
        "layers_until": request.layers_until.isoformat(),
        "ensemble_until": request.ensemble_until.isoformat(),
        "test_until": request.test_until.isoformat(),
        "small": request.small,
    }
    if request.source == "simulated":
        out.update(seed=request.seed, cards=request.cards, fraud_rate=request.fraud_rate)
    for section, values in params.model_dump().items():
        if isinstance(values, Mapping):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def contributions_plot(ablation: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Average Precision on the test period of the engine, each layer alone and the
    engine without each layer: what each layer adds, in one picture."""
    names = [n for n in VARIANTS if n in ablation]
    values = [ablation[n]["average_precision"] for n in names]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    colours = [
        "tab:green" if n == ENGINE else "tab:blue" if "alone" in n else "tab:orange" for n in names
    ]
    ax.barh(names[::-1], values[::-1], color=colours[::-1])
    for y, v in enumerate(values[::-1]):
        ax.text(v, y, f" {v:.3f}", va="center")
    ax.set(xlabel="average precision (test period)", xlim=(0, 1.1), title="Per-layer contribution")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def registry_for(settings: Settings) -> ModelRegistry:
    from training.registry_mlflow import MlflowRegistry

    return MlflowRegistry(RegistryConfig.from_settings(settings.mlflow))


def train_and_register(
    settings: Settings,
    request: TrainRequest,
    *,
    registry: ModelRegistry | None = None,
    out_dir: Path | None = None,
    say: Say | None = None,
) -> TrainOutcome:
    tell = say or (lambda _m: None)
    history, labels, truth = load_source(request, tell)
    params = training_params(request)
    with tempfile.TemporaryDirectory(prefix="fraudstream-train-") as scratch:
        bundle = out_dir or Path(scratch) / "bundle"
        trained = train_engine(
            history,
            labels,
            truth.select("transaction_id", "is_fraud"),
            layers_until=midnight_ms(request.layers_until),
            ensemble_until=midnight_ms(request.ensemble_until),
            out_dir=bundle,
            rules_file=settings.scoring.rules_file,
            params=params,
            progress=tell,
            trained_on=f"{request.source}: {request.data_path or f'seed {request.seed}'}",
        )
        tell("scoring the test period")
        data = prepare(history, labels)
        window = Window(
            name="test",
            train_start=midnight_ms(request.start),
            split=midnight_ms(request.layers_until),
            train_end=midnight_ms(request.ensemble_until) - params.label_delay_ms,
            known_before=midnight_ms(request.ensemble_until),
            test_start=midnight_ms(request.ensemble_until),
            test_end=midnight_ms(request.test_until),
        )
        rows = assessed_rows(data, window)
        if len(rows) == 0:
            raise WindowTooSmall("test", 0, 0)
        scores = ablation_scores(trained.ensemble, data.batch(rows))
        ablation = window_metrics(data, rows, scores, truth, category="category")
        metrics = dict(ablation[ENGINE])
        for name, values in ablation.items():
            if name != ENGINE:
                key = name.replace(" ", "_")
                metrics.update({f"{key}.{m}": v for m, v in values.items() if m in _LOGGED})
        metrics["test_transactions"] = float(len(rows))
        plot_dir = Path(scratch) / "plots"
        y = (
            data.history[rows.tolist()]
            .select("transaction_id")
            .join(truth, on="transaction_id", how="left", maintain_order="left")["is_fraud"]
            .to_numpy()
        )
        plots = evaluation_plots(y, scores[ENGINE], plot_dir)
        plots.append(contributions_plot(ablation, plot_dir / CONTRIBUTIONS_FILE))
        tell("registering the model version")
        reg = registry or registry_for(settings)
        version = reg.register(
            bundle,
            metrics,
            flat_params(request, params),
            trained.definitions_hash,
            tags={
                "engine_version": trained.version,
                "trained_on": trained.info.trained_on,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            plots=plots,
        )
    return TrainOutcome(version, trained, metrics, [p.name for p in plots])


_LOGGED = ("auc_roc", "average_precision", "card_precision_at_100", "recall_at_fpr_1pct")


def default_dates(source: Source, start: date | None) -> tuple[date, date, date, date]:
    """(start, layers_until, ensemble_until, test_until) when not given: for the handbook
    the test week is the first prequential test fold's (2018-08-08); for a simulation, a
    40-day run from 2025-01-01."""
    if source == "handbook":
        first = start or date(2018, 7, 1)
        return first, date(2018, 7, 25), date(2018, 8, 8), date(2018, 8, 15)
    first = start or date(2025, 1, 1)
    return (
        first,
        first + timedelta(days=20),
        first + timedelta(days=33),
        first + timedelta(days=40),
    )


__all__ = [
    "TrainOutcome",
    "TrainRequest",
    "contributions_plot",
    "default_dates",
    "registry_for",
    "train_and_register",
]
