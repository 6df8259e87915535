"""Layer ablation on one time window: fit an engine on a training window, score a later
test window as the full engine, each layer alone and the engine without each layer.

Why these rows: the full engine is what runs; *a layer alone* says what that layer is
worth by itself (its own score, as it would rank payments with nothing else); *without
a layer* says what the engine loses when that layer's breaker opens. The "without" rows
need no retraining: the meta model keeps a stacker fitted without each input (that is
how the engine degrades live), so they are read off ``EnsembleScorer.score_from``.

:func:`fit_window_ensemble` is a small stand-in for ``training.engine.train_engine``:
the protocols evaluate many windows of one history, so the features are computed once
for the whole history and passed in, the layers period has a *start* (the protocol's
training window, not "everything before"), and GNN and isolation forest (with their
out-of-fold scores, when cross-fitting) are fitted once per window while only XGBoost
varies over the hyperparameter grid. It fits the layers exactly as ``train_engine``
does (its ``_fit_gnn``; cross-fitting through :mod:`training.crossfit`) and nothing is
saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from features.matrix import FeatureMatrix
from features.sources import history_transactions
from models.base import Scorer, ScoringBatch
from models.ensemble import EnsembleScorer
from models.iforest import IsolationForestScorer
from models.rules import InMemoryListStore, RulesScorer, load_rule_file
from models.xgb import XGBoostParams, XGBoostScorer
from training.crossfit import (
    Fitter,
    LayerScoring,
    OutOfFold,
    out_of_fold_scores,
    stack_out_of_fold,
)
from training.engine import TrainingParams, _fit_gnn
from training.errors import TrainingError
from training.metrics import evaluation_metrics
from training.split import Period, period_targets

Say = Callable[[str], None]
LAYERS = ("xgboost", "gnn", "iforest", "rules")
LEARNED = ("xgboost", "gnn", "iforest")
ENGINE = "engine"
VARIANTS = (ENGINE, *(f"{n} alone" for n in LAYERS), *(f"without {n}" for n in LAYERS))


class WindowTooSmall(TrainingError):
    """A training period holds too few rows, or rows of one class only."""

    def __init__(self, period: str, rows: int, frauds: int) -> None:
        self.period = period
        self.rows = rows
        self.frauds = frauds
        super().__init__(
            f"the {period} period has {rows} rows and {frauds} known frauds: it needs "
            "rows of both kinds (lengthen the window or use more data)"
        )


@dataclass(frozen=True)
class Window:
    """One train/test split in event time (ms since the epoch, half-open intervals).

    Layers learn rows ``[train_start, split)``, the meta model rows ``[split,
    train_end)``; both with the labels that arrived before ``known_before`` (when the
    engine goes live). The test rows are ``[test_start, test_end)``.
    """

    name: str
    train_start: int
    split: int
    train_end: int
    known_before: int
    test_start: int
    test_end: int

    def __post_init__(self) -> None:
        order = (self.train_start, self.split, self.train_end, self.test_start, self.test_end)
        if list(order) != sorted(order) or len(set(order[:3])) < 3 or order[3] == order[4]:
            raise ValueError(f"window {self.name}: periods out of order {order}")
        if self.known_before > self.test_start:
            raise ValueError(f"window {self.name}: labels known after the test starts")

    @property
    def layers(self) -> Period:
        return Period(self.train_start, self.split, self.known_before)

    @property
    def ensemble(self) -> Period:
        return Period(self.split, self.train_end, self.known_before)

    @property
    def whole(self) -> Period:
        """Both periods as one: what cross-fitting trains on."""
        return Period(self.train_start, self.train_end, self.known_before)


@dataclass(frozen=True)
class Prepared:
    """A history with its features, computed once for every window over it."""

    history: pl.DataFrame
    labels: pl.DataFrame
    matrix: FeatureMatrix

    def batch(self, rows: npt.NDArray[np.int64]) -> ScoringBatch:
        transactions = history_transactions(self.history[rows.tolist()])
        return ScoringBatch(
            transactions, FeatureMatrix(self.matrix.names, self.matrix.values[rows])
        )


def _targets(
    data: Prepared, period: Period, name: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    rows, y = period_targets(data.history, data.labels, period)
    frauds = int(y.sum())
    if len(y) < 20 or frauds == 0 or frauds == len(y):
        raise WindowTooSmall(name, len(y), frauds)
    return rows, y


@dataclass(frozen=True)
class FixedLayers:
    """The layers that do not vary over the grid, fitted once per window; with
    cross-fitting also their out-of-fold scores of the window's training rows."""

    gnn: Scorer
    iforest: Scorer
    oof: OutOfFold | None = None


def _fit_fixed(data: Prepared, params: TrainingParams) -> Fitter:
    def fit(rows: npt.NDArray[np.int64], y: npt.NDArray[np.float32]) -> dict[str, Scorer]:
        train = FeatureMatrix(data.matrix.names, data.matrix.values[rows])
        iforest = IsolationForestScorer.fit(train, y, params=params.iforest)
        gnn = _fit_gnn(data.history, train, rows, y, params)
        return {"gnn": gnn, "iforest": iforest}

    return fit


def _fit_xgboost(data: Prepared, params: TrainingParams) -> Fitter:
    xgb_params = params.xgboost.model_copy(update={"train_threads": params.threads})

    def fit(rows: npt.NDArray[np.int64], y: npt.NDArray[np.float32]) -> dict[str, Scorer]:
        train = FeatureMatrix(data.matrix.names, data.matrix.values[rows])
        return {"xgboost": XGBoostScorer.fit(train, y, params=xgb_params)}

    return fit


def _scoring(data: Prepared) -> LayerScoring:
    def score(
        layers: Mapping[str, Scorer], rows: npt.NDArray[np.int64]
    ) -> dict[str, npt.NDArray[np.float64]]:
        batch = data.batch(rows)
        return {n: np.asarray(layer.score(batch), np.float64) for n, layer in layers.items()}

    return score


def fit_fixed_layers(
    data: Prepared, window: Window, params: TrainingParams, say: Say
) -> FixedLayers:
    cross = params.cross_fit
    period = window.whole if cross.enabled else window.layers
    rows, y = _targets(data, period, "training" if cross.enabled else "layers")
    fit = _fit_fixed(data, params)
    oof = None
    if cross.enabled:
        say(f"{window.name}: GNN and isolation forest, cross-fit ({cross.describe()})")
        oof = out_of_fold_scores(rows, y, cross, fit=fit, score=_scoring(data))
    say(f"{window.name}: isolation forest and GNN ({params.gnn.epochs} epochs) on {len(rows)} "
        f"rows ({int(y.sum())} known frauds)")  # fmt: skip
    final = fit(rows, y)
    return FixedLayers(gnn=final["gnn"], iforest=final["iforest"], oof=oof)


def fit_window_ensemble(
    data: Prepared,
    window: Window,
    params: TrainingParams,
    *,
    rules_file: Path,
    fixed: FixedLayers | None = None,
    say: Say | None = None,
) -> EnsembleScorer:
    """Every layer on the window's layers period, the meta model on its ensemble period;
    or, with ``params.cross_fit``, every layer on the whole training period and the meta
    model on out-of-fold scores of it (:mod:`training.crossfit`)."""
    tell = say or (lambda _m: None)
    fixed = fixed or fit_fixed_layers(data, window, params, tell)
    cross = params.cross_fit
    rules = RulesScorer(load_rule_file(rules_file, data.matrix.names), InMemoryListStore())
    tell(f"{window.name}: XGBoost {describe_xgboost(params.xgboost)}")
    fit_xgb = _fit_xgboost(data, params)
    if cross.enabled:
        rows, y = _targets(data, window.whole, "training")
        oof = out_of_fold_scores(rows, y, cross, fit=fit_xgb, score=_scoring(data))
        if fixed.oof is None:
            raise ValueError("the fixed layers were fitted without cross-fitting")
        oof = oof.merge(fixed.oof)
        final = {**fit_xgb(rows, y), "gnn": fixed.gnn, "iforest": fixed.iforest}
        flags = rules.evaluate(data.batch(rows[oof.index])).flags()
        tell(f"{window.name}: meta-ensemble on {len(oof.index)} out-of-fold rows "
             f"({int(y[oof.index].sum())} frauds)")  # fmt: skip
        return stack_out_of_fold(final, oof, y, flags=flags, rules=rules, params=params.meta)
    rows, y = _targets(data, window.layers, "layers")
    layers: dict[str, Scorer] = {
        **fit_xgb(rows, y),
        "gnn": fixed.gnn,
        "iforest": fixed.iforest,
    }
    meta_rows, meta_y = _targets(data, window.ensemble, "ensemble")
    tell(f"{window.name}: meta-ensemble on {len(meta_rows)} rows ({int(meta_y.sum())} frauds)")
    return EnsembleScorer.fit(
        layers, data.batch(meta_rows), meta_y, rules=rules, params=params.meta
    )


_DEFAULT_MAX_BIN = XGBoostParams().max_bin


def describe_xgboost(p: XGBoostParams) -> str:
    bagging = f" bags={p.bags} at {p.negatives_per_positive:g}:1" if p.bags > 1 else ""
    return (
        f"max_depth={p.max_depth} n_estimators={p.n_estimators} "
        f"learning_rate={p.learning_rate:g} min_child_weight={p.min_child_weight:g}"
        f"{'' if p.max_bin == _DEFAULT_MAX_BIN else f' max_bin={p.max_bin}'}{bagging}"
    )


def ablation_scores(ensemble: EnsembleScorer, batch: ScoringBatch) -> dict[str, npt.NDArray[Any]]:
    """Scores of every row of ``VARIANTS`` on ``batch``.

    A layer alone is its own score (rules: the rule layer's score from the flags that
    fired); without a layer is the meta model's fallback stacker fitted without it.
    """
    if ensemble.rules is None:
        raise ValueError("the ablation needs an ensemble with a rule layer")
    n = len(batch)
    layer = ensemble.layer_scores(batch)
    evaluation = ensemble.rules.evaluate(batch)
    flags = evaluation.flags()
    out: dict[str, npt.NDArray[Any]] = {
        ENGINE: ensemble.score_from(layer, flags, n).scores,
        "rules alone": np.asarray(evaluation.scores(ensemble.rules.settings), dtype=np.float64),
    }
    for name in LEARNED:
        out[f"{name} alone"] = np.asarray(layer[name], dtype=np.float64)
        rest = {k: v for k, v in layer.items() if k != name}
        out[f"without {name}"] = ensemble.score_from(rest, flags, n).scores
    out["without rules"] = ensemble.score_from(layer, None, n).scores
    return {name: out[name] for name in VARIANTS}


# --- which test rows count ---------------------------------------------------------


def known_compromised(
    cards: pl.Series,
    event_time_ms: pl.Series,
    labels: pl.DataFrame,
    *,
    since_ms: int,
    day_ms: int = 86_400_000,
) -> npt.NDArray[np.bool_]:
    """True for each (card, time) row whose card was already known compromised that day:
    a fraud label on the card, for a payment at or after ``since_ms`` (the training
    window's start), had *arrived* before the row's day began.

    On the handbook (every label arrives exactly 7 days after its payment) this is the
    protocol's rule, ``training.protocol.known_compromised_mask``; on other data it is
    the same rule stated with the real label arrival times.
    """
    first = (
        labels.filter((pl.col("is_fraud") == 1) & (pl.col("event_time_ms") >= since_ms))
        .group_by("card_id")
        .agg(pl.col("label_time_ms").min().alias("_known_at"))
    )
    rows = pl.DataFrame({"card_id": cards, "_t": event_time_ms}).with_row_index("_row")
    joined = rows.join(first, on="card_id", how="left").sort("_row")
    day_start = (joined["_t"] // day_ms) * day_ms
    known = joined["_known_at"].is_not_null() & (joined["_known_at"] < day_start)
    return np.asarray(known.fill_null(False).to_numpy(), dtype=np.bool_)


def assessed_rows(data: Prepared, window: Window) -> npt.NDArray[np.int64]:
    """Positions of the window's test rows, in event order, known-compromised cards out."""
    frame = data.history.select("card_id", "event_time_ms", "transaction_id").with_row_index("_row")
    chosen = frame.filter(
        (pl.col("event_time_ms") >= window.test_start) & (pl.col("event_time_ms") < window.test_end)
    ).sort(["event_time_ms", "transaction_id"])
    known = known_compromised(
        chosen["card_id"], chosen["event_time_ms"], data.labels, since_ms=window.train_start
    )
    return np.asarray(chosen["_row"].to_numpy()[~known], dtype=np.int64)


# --- metrics of one window ---------------------------------------------------------


def window_metrics(
    data: Prepared,
    rows: npt.NDArray[np.int64],
    scores: Mapping[str, npt.NDArray[Any]],
    truth: pl.DataFrame,
    *,
    category: str | None,
    k: int = 100,
) -> dict[str, dict[str, float]]:
    """Metric name -> value for each variant; ``truth`` has ``transaction_id, is_fraud``
    and the ``category`` column (ground truth, never a model input)."""
    part = data.history[rows.tolist()].select("transaction_id", "card_id", "event_time_ms")
    frame = part.join(truth, on="transaction_id", how="left", maintain_order="left")
    if frame["is_fraud"].null_count():
        raise ValueError("every test row needs its ground truth")
    frame = frame.with_columns(
        pl.from_epoch("event_time_ms", time_unit="ms").alias("_when"),
        *(pl.Series(name, np.asarray(values, np.float64)) for name, values in scores.items()),
    )
    return {
        name: evaluation_metrics(
            frame,
            score_col=name,
            label_col="is_fraud",
            card_col="card_id",
            day_col="_when",
            category_col=category,
            k=k,
        )
        for name in scores
    }


@dataclass
class ScorePool:
    """The assessed rows' labels and every variant's scores, pooled over the windows
    evaluated (for precision-recall curves)."""

    labels: list[npt.NDArray[np.float64]] = field(default_factory=list)
    scores: dict[str, list[npt.NDArray[np.float64]]] = field(default_factory=dict)

    def pooled(self, names: Sequence[str]) -> dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
        y = np.concatenate(self.labels) if self.labels else np.zeros(0)
        return {n: (y, np.concatenate(self.scores[n])) for n in names if n in self.scores}


def evaluate_window(
    data: Prepared,
    window: Window,
    ensemble: EnsembleScorer,
    truth: pl.DataFrame,
    *,
    category: str | None,
    pool: ScorePool | None = None,
) -> dict[str, dict[str, float]]:
    rows = assessed_rows(data, window)
    if len(rows) == 0:
        raise WindowTooSmall("test", 0, 0)
    scores = ablation_scores(ensemble, data.batch(rows))
    if pool is not None:
        ids = data.history[rows.tolist()].select("transaction_id")
        labels = ids.join(truth, on="transaction_id", how="left", maintain_order="left")
        pool.labels.append(labels["is_fraud"].cast(pl.Float64).to_numpy())
        for name, values in scores.items():
            pool.scores.setdefault(name, []).append(np.asarray(values, np.float64))
    return window_metrics(data, rows, scores, truth, category=category)


def per_variant(
    folds: Sequence[Mapping[str, Mapping[str, float]]],
) -> dict[str, list[dict[str, float]]]:
    """Fold-major metrics turned variant-major, for ``summarise_folds``."""
    return {name: [dict(fold[name]) for fold in folds] for name in VARIANTS}
