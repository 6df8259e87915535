"""Train a whole engine — every layer and the meta-ensemble — into one bundle, and load it.

:func:`train_engine` computes the features of the whole history at once
(:func:`features.offline.build_features`, so every window is warm at the start of each
period), trains XGBoost, the isolation forest and the GNN on the *layers* period, fits
the meta-ensemble over them and the rule layer (``config/rules.toml``) on the later
*ensemble* period (:mod:`training.split` says which rows and which labels) — or, with
``TrainingParams.cross_fit``, cross-fits both periods as one (:mod:`training.crossfit`:
the meta model on out-of-fold layer scores, the layers refitted on everything) — and
saves it
as one directory: the ensemble (``models/ensemble``) plus ``engine.json``, the feature
definitions hash, feature names, periods, row counts and metrics. ``engine.json`` is
listed in the same manifest, so one digest pins the whole bundle.

Loading (:func:`load_engine`, :func:`load_bundle`) lives in :mod:`training.bundle` and is
re-exported here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from features.definitions import DAY_MS, DEFINITIONS_HASH, FEATURE_NAMES, LABEL_DELAY_MS
from features.matrix import FeatureMatrix
from features.offline import build_features
from features.sources import history_transactions
from fraudstream.drift import ReferenceHistogram
from fraudstream.errors import TrainingPeriodError
from models.base import Scorer, ScoringBatch
from models.ensemble import EnsembleScorer, MetaParams
from models.gnn import GNNConfig, GNNScorer
from models.iforest import IsolationForestParams, IsolationForestScorer
from models.rules import InMemoryListStore, RulesScorer, load_rule_file
from models.xgb import XGBoostParams, XGBoostScorer
from training.bundle import (
    ENGINE_FILE,
    EngineInfo,
    TrainedEngine,
    load_bundle,
    load_engine,
    read_engine_info,
    save_bundle,
)
from training.crossfit import CrossFitParams, cross_fit_ensemble
from training.split import Period, TrainingPeriods, period_targets, training_periods

Progress = Callable[[str], None]


class TrainingParams(BaseModel):
    """How hard each part trains. The defaults are for real data; :meth:`small` is for
    tests and the demo (seconds on two cores)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    xgboost: XGBoostParams = XGBoostParams()
    iforest: IsolationForestParams = IsolationForestParams()
    gnn: GNNConfig = GNNConfig()
    meta: MetaParams = MetaParams()
    # Off by default: the layers learn the layers period, the meta model the ensemble
    # period. On: see training.crossfit (every layer learns both periods).
    cross_fit: CrossFitParams = CrossFitParams()
    # A row without a label counts as genuine only this long before a period's cutoff.
    label_delay_ms: int = Field(default=LABEL_DELAY_MS, ge=0)
    # Threads for training only; scoring always runs single-threaded.
    threads: int = Field(default=max(1, min(os.cpu_count() or 1, 8)), ge=1)

    @classmethod
    def small(cls, *, label_delay_ms: int = 2 * DAY_MS, epochs: int = 8) -> TrainingParams:
        threads = 1
        return cls(
            xgboost=XGBoostParams(n_estimators=60, max_depth=4, train_threads=threads),
            iforest=IsolationForestParams(n_estimators=50, cdf_points=257),
            gnn=GNNConfig(
                history_days=14.0,
                label_delay_days=label_delay_ms / DAY_MS,
                refresh_every_hours=24.0,
                train_snapshots=3,
                hidden_dim=16,
                embedding_dim=8,
                head_hidden=16,
                epochs=epochs,
                head_epochs=5,
                train_threads=threads,
            ),
            meta=MetaParams(calibration="platt", calibration_fraction=0.3),
            label_delay_ms=label_delay_ms,
            threads=threads,
        )


def train_engine(
    history: pl.DataFrame,
    labels: pl.DataFrame,
    outcomes: pl.DataFrame | None,
    *,
    layers_until: datetime | int,
    ensemble_until: datetime | int,
    out_dir: Path,
    rules_file: Path,
    params: TrainingParams | None = None,
    progress: Progress | None = None,
    trained_on: str = "",
) -> TrainedEngine:
    """Train every layer and the meta-ensemble and save them to ``out_dir``.

    ``history`` and ``labels`` follow :mod:`features.table`; ``outcomes``
    (``transaction_id, is_fraud``: the ground truth, where known) is used only to report
    metrics, never to train. ``out_dir`` is replaced as a whole once the bundle is
    complete, so a running worker never sees half of one.
    """
    params = params or TrainingParams()
    say = progress or (lambda _message: None)
    periods = training_periods(layers_until, ensemble_until, params.label_delay_ms)
    started = time.perf_counter()

    say(f"features of {history.height} transactions")
    features = build_features(history, labels)
    matrix = FeatureMatrix(
        FEATURE_NAMES,
        np.ascontiguousarray(features.select(FEATURE_NAMES).to_numpy(), dtype=np.float64),
    )
    layer_rows, layer_y = period_targets(history, labels, periods.layers)
    meta_rows, meta_y = period_targets(history, labels, periods.ensemble)
    _check_period("layers", periods.layers, layer_y)
    _check_period("ensemble", periods.ensemble, meta_y)
    rules = RulesScorer(load_rule_file(rules_file, FEATURE_NAMES), InMemoryListStore())

    if params.cross_fit.enabled:
        ensemble, layer_rows, layer_y = _cross_fit(
            history, matrix, labels, periods, rules=rules, params=params, say=say
        )
    else:
        _check_calibration_slice(meta_y, params.meta.calibration_fraction)
        layers = _fit_layers(
            history, matrix=matrix, rows=layer_rows, y=layer_y, params=params, say=say
        )
        say(f"meta-ensemble on {len(meta_rows)} rows ({int(meta_y.sum())} known frauds)")
        ensemble = EnsembleScorer.fit(
            layers, _batch(history, matrix, meta_rows), meta_y, rules=rules, params=params.meta
        )
    meta_batch = _batch(history, matrix, meta_rows)

    metrics = _metrics(
        ensemble,
        batch=meta_batch,
        rows=meta_rows,
        known=meta_y,
        history=history,
        outcomes=outcomes,
    )
    # Cross-fitted layers learned the ensemble period too: these metrics are in-sample.
    metrics["cross_fit"] = params.cross_fit.describe()
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    info = EngineInfo(
        version=ensemble.version,
        definitions_hash=DEFINITIONS_HASH,
        feature_names=FEATURE_NAMES,
        periods=periods.as_json(),
        rows={
            "history": history.height,
            "labels": labels.height,
            "layers": len(layer_rows),
            "layers_frauds": int(layer_y.sum()),
            "ensemble": len(meta_rows),
            "ensemble_frauds": int(meta_y.sum()),
        },
        metrics=metrics,
        trained_on=trained_on,
    )
    say(f"saving the engine to {out_dir}")
    save_bundle(ensemble, info, out_dir)
    return TrainedEngine(out_dir, info, ensemble)


def _cross_fit(
    history: pl.DataFrame,
    matrix: FeatureMatrix,
    labels: pl.DataFrame,
    periods: TrainingPeriods,
    *,
    rules: RulesScorer,
    params: TrainingParams,
    say: Progress,
) -> tuple[EnsembleScorer, npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Cross-fitting over both periods as one, with the labels known at the end."""
    whole = Period(
        periods.layers.start_ms, periods.ensemble.end_ms, periods.ensemble.labels_known_before_ms
    )
    rows, y = period_targets(history, labels, whole)
    _check_period("training", whole, y)

    def fit(part: npt.NDArray[np.int64], target: npt.NDArray[np.float32]) -> dict[str, Scorer]:
        return _fit_layers(history, matrix=matrix, rows=part, y=target, params=params, say=say)

    def score(
        layers: Mapping[str, Scorer], part: npt.NDArray[np.int64]
    ) -> dict[str, npt.NDArray[np.float64]]:
        batch = _batch(history, matrix, part)
        return {n: np.asarray(layer.score(batch), np.float64) for n, layer in layers.items()}

    def flags(part: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return np.asarray(rules.evaluate(_batch(history, matrix, part)).flags(), np.float64)

    say(f"cross-fitting ({params.cross_fit.describe()}) on {len(rows)} rows")
    ensemble, _oof = cross_fit_ensemble(
        rows, y, params.cross_fit, fit=fit, score=score, flags=flags, rules=rules,
        meta=params.meta,
    )  # fmt: skip
    return ensemble, rows, y


def _check_period(name: str, period: Period, y: npt.NDArray[np.float32]) -> None:
    positives = int(y.sum())
    if len(y) < 10 or positives == 0 or positives == len(y):
        raise TrainingPeriodError(
            name,
            len(y),
            positives,
            f"from {period.start_ms} to {period.end_ms} ms it needs rows of both kinds; "
            "move layers_until / ensemble_until",
        )


def _check_calibration_slice(y: npt.NDArray[np.float32], fraction: float) -> None:
    # MetaModel.fit checks the rows it fits on, not the latest ones it calibrates on:
    # without a fraud there, calibration collapses every score to one value.
    cut = round(len(y) * (1.0 - fraction))
    positives = int(y[cut:].sum())
    if positives == 0 or positives == len(y) - cut:
        raise TrainingPeriodError(
            "ensemble calibration",
            len(y) - cut,
            positives,
            f"the latest {fraction:.0%} of the ensemble period calibrate the meta model and "
            "need rows of both kinds; lengthen the ensemble period or lower "
            "meta.calibration_fraction",
        )


def _fit_layers(
    history: pl.DataFrame,
    *,
    matrix: FeatureMatrix,
    rows: npt.NDArray[np.int64],
    y: npt.NDArray[np.float32],
    params: TrainingParams,
    say: Progress,
) -> dict[str, Scorer]:
    train = FeatureMatrix(matrix.names, matrix.values[rows])
    say(f"XGBoost on {len(rows)} rows ({int(y.sum())} known frauds)")
    xgb_params = params.xgboost.model_copy(update={"train_threads": params.threads})
    xgboost = XGBoostScorer.fit(train, y, params=xgb_params)
    say("isolation forest on the genuine rows")
    iforest = IsolationForestScorer.fit(train, y, params=params.iforest)
    say(f"GNN ({params.gnn.epochs} epochs)")
    gnn = _fit_gnn(history, train, rows, y, params)
    return {"xgboost": xgboost, "iforest": iforest, "gnn": gnn}


def _fit_gnn(
    history: pl.DataFrame,
    train: FeatureMatrix,
    rows: npt.NDArray[np.int64],
    y: npt.NDArray[np.float32],
    params: TrainingParams,
) -> GNNScorer:
    import torch

    part = history[rows.tolist()]
    frame = pd.DataFrame(
        {
            "transaction_id": part["transaction_id"].to_list(),
            "event_time": pd.to_datetime(part["event_time_ms"].to_numpy(), unit="ms", utc=True),
            "amount": part["amount"].to_numpy(),
            **{c: part[c].to_list() for c in ("card_id", "terminal_id", "device_id", "ip")},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        config = params.gnn.model_copy(update={"train_threads": params.threads})
        return GNNScorer.fit(frame, train, y, config=config)
    finally:
        torch.set_num_threads(threads)


def _batch(
    history: pl.DataFrame, matrix: FeatureMatrix, rows: npt.NDArray[np.int64]
) -> ScoringBatch:
    transactions = history_transactions(history[rows.tolist()])
    return ScoringBatch(transactions, FeatureMatrix(matrix.names, matrix.values[rows]))


def _metrics(
    ensemble: EnsembleScorer,
    *,
    batch: ScoringBatch,
    rows: npt.NDArray[np.int64],
    known: npt.NDArray[np.float32],
    history: pl.DataFrame,
    outcomes: pl.DataFrame | None,
) -> dict[str, Any]:
    """ROC AUC and average precision of each layer and of the ensemble on the ensemble
    period, against the ground truth when given (else the labels known then)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth, source = known.astype(np.int64), "known_labels"
    if outcomes is not None:
        ids = pl.DataFrame({"transaction_id": history["transaction_id"].gather(rows)})
        joined = ids.join(
            outcomes.select("transaction_id", "is_fraud"),
            on="transaction_id",
            how="left",
            maintain_order="left",
        )
        if joined["is_fraud"].null_count() == 0:
            truth, source = joined["is_fraud"].to_numpy().astype(np.int64), "outcomes"
    scores = dict(ensemble.layer_scores(batch))
    scores["ensemble"] = ensemble.score(batch)
    out: dict[str, Any] = {"period": "ensemble", "truth": source, "frauds": int(truth.sum())}
    # The score distribution on held-out rows: what the worker's drift (PSI) compares to.
    if len(scores["ensemble"]):
        reference = ReferenceHistogram.from_scores(scores["ensemble"].tolist(), bins=10)
        out["score_reference"] = reference.model_dump(mode="json")
    if 0 < truth.sum() < len(truth):
        for name, values in sorted(scores.items()):
            out[name] = {
                "roc_auc": round(float(roc_auc_score(truth, values)), 6),
                "average_precision": round(float(average_precision_score(truth, values)), 6),
            }
    return out


__all__ = [
    "ENGINE_FILE",
    "EngineInfo",
    "TrainedEngine",
    "TrainingParams",
    "TrainingPeriods",
    "load_bundle",
    "load_engine",
    "read_engine_info",
    "save_bundle",
    "train_engine",
]
