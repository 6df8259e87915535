"""Detection metrics exactly as the handbook's protocol defines them.

The handbook (``../shared/data/handbook/README.md``; Le Borgne et al., chapter 4) is
the yardstick every model here is compared with, so these functions reproduce its
definitions rather than improve on them; a number that differs from the published bar
must mean a different model, never a different metric.

- AUC ROC and Average Precision are transaction-level and threshold-free: sklearn's
  ``roc_auc_score`` and ``average_precision_score``.
- Card Precision@k is what an investigator team with capacity for ``k`` cards a day
  sees: per test day, each card gets its max score and its max label, the ``k``
  highest-scored cards are checked, and the share of them that were compromised is the
  day's precision (divided by ``k`` even when fewer cards exist, as in the handbook).
  Cards caught (fraudulent and in a day's top ``k``) are blocked, so they are removed
  from later days. The result is the mean over the days present in the data.
- Recall at a fixed false-positive rate answers the ops question "if we may bother 1 %
  of good transactions, which attack patterns do we still miss?", hence the breakdown
  by a category column (the generator's ``TX_FRAUD_SCENARIO``, never a model input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score

from training.errors import MetricUndefinedError

ArrayLike = npt.ArrayLike


def _binary(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float64]]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-d and of equal length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores must not be NaN")
    return y.astype(np.int8), s


def _both_classes(metric: str, y: npt.NDArray[np.int8]) -> None:
    positives = int(y.sum())
    if positives in (0, y.size):
        raise MetricUndefinedError(
            metric, f"{y.size} labels, {positives} positive: needs both classes"
        )


def auc_roc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; raises ``MetricUndefinedError`` on a single class."""
    y, s = _binary(labels, scores)
    _both_classes("auc_roc", y)
    return float(roc_auc_score(y, s))


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average Precision (step-wise area under the PR curve, no interpolation)."""
    y, s = _binary(labels, scores)
    _both_classes("average_precision", y)
    return float(average_precision_score(y, s))


# --- Card Precision@k ----------------------------------------------------------------


@dataclass(frozen=True)
class DayCardPrecision:
    day: object  # the value of the day column (int day index or a date)
    precision: float
    detected_cards: tuple[object, ...]  # compromised cards in that day's top k
    compromised_cards: int  # compromised cards still eligible that day: the day's ceiling


@dataclass(frozen=True)
class CardPrecisionAtK:
    k: int
    mean: float
    days: tuple[DayCardPrecision, ...]

    @property
    def ceiling(self) -> float:
        """Mean CP@k a perfect ranking would reach (the handbook's ≈0.42 on its test folds)."""
        return float(np.mean([min(d.compromised_cards, self.k) / self.k for d in self.days]))


def card_precision_at_k(
    frame: pl.DataFrame,
    k: int = 100,
    *,
    score_col: str = "score",
    label_col: str = "TX_FRAUD",
    card_col: str = "CUSTOMER_ID",
    day_col: str = "TX_TIME_DAYS",
    remove_detected: bool = True,
) -> CardPrecisionAtK:
    """Handbook Card Precision@k over the days of ``frame`` (one row per transaction).

    ``day_col`` may be an integer day index or a datetime (then its calendar date is the
    day). Ties in a card's score are broken by card id, ascending, so the result is
    deterministic (the handbook leaves tie order to pandas' unstable sort).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if frame.height == 0:
        raise MetricUndefinedError(f"card_precision_at_{k}", "no transactions")
    day = pl.col(day_col)
    if isinstance(frame.schema[day_col], pl.Datetime):
        day = day.dt.date()
    per_card = (
        frame.select(
            day.alias("_day"),
            pl.col(card_col).alias("_card"),
            pl.col(score_col).cast(pl.Float64).alias("_score"),
            pl.col(label_col).cast(pl.Int8).alias("_label"),
        )
        .group_by("_day", "_card")
        .agg(pl.col("_score").max(), pl.col("_label").max())
    )
    caught: set[object] = set()
    days: list[DayCardPrecision] = []
    for (day_value,), day_cards in sorted(
        per_card.partition_by("_day", as_dict=True).items(), key=lambda item: item[0]
    ):
        cards = day_cards.filter(~pl.col("_card").is_in(list(caught))) if caught else day_cards
        ranked = cards.sort(["_score", "_card"], descending=[True, False]).head(k)
        detected = tuple(ranked.filter(pl.col("_label") == 1)["_card"].to_list())
        days.append(
            DayCardPrecision(
                day=day_value,
                precision=len(detected) / k,
                detected_cards=detected,
                compromised_cards=int((cards["_label"] == 1).sum()),
            )
        )
        if remove_detected:
            caught.update(detected)
    return CardPrecisionAtK(k=k, mean=float(np.mean([d.precision for d in days])), days=tuple(days))


# --- recall at a fixed false-positive rate -------------------------------------------


@dataclass(frozen=True)
class CategoryRecall:
    positives: int
    detected: int

    @property
    def recall(self) -> float:
        return self.detected / self.positives


@dataclass(frozen=True)
class RecallAtFpr:
    max_fpr: float
    threshold: float  # flag when score >= threshold (inf: nothing can be flagged)
    fpr: float  # the false-positive rate actually reached, <= max_fpr
    recall: float
    by_category: dict[str, CategoryRecall]  # only categories that hold positives


def recall_at_fpr(
    labels: ArrayLike,
    scores: ArrayLike,
    categories: Sequence[object] | ArrayLike | None = None,
    *,
    max_fpr: float = 0.01,
) -> RecallAtFpr:
    """Highest recall whose false-positive rate stays at or under ``max_fpr``.

    The threshold is the lowest observed score that flags no more than
    ``floor(max_fpr × negatives)`` negatives; tied scores are flagged together, so a
    tie straddling the budget is left out entirely (the operating point never exceeds
    the budget). This is the best point on sklearn's ``roc_curve`` with ``fpr <=
    max_fpr``.
    """
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be within [0, 1], got {max_fpr}")
    y, s = _binary(labels, scores)
    _both_classes("recall_at_fpr", y)
    negatives = np.sort(s[y == 0])[::-1]
    budget = math.floor(max_fpr * negatives.size + 1e-9)
    if budget >= negatives.size:
        threshold = float(s.min())
    else:
        # Scores above the (budget+1)-th highest negative flag at most ``budget`` negatives.
        above = s[s > negatives[budget]]
        threshold = float(above.min()) if above.size else math.inf
    flagged = s >= threshold
    by_category: dict[str, CategoryRecall] = {}
    if categories is not None:
        cats = np.asarray(categories)
        if cats.shape != y.shape:
            raise ValueError(f"categories {cats.shape} must align with labels {y.shape}")
        for cat in np.unique(cats[y == 1]):
            members = (cats == cat) & (y == 1)
            by_category[str(cat)] = CategoryRecall(
                positives=int(members.sum()), detected=int((members & flagged).sum())
            )
    return RecallAtFpr(
        max_fpr=max_fpr,
        threshold=threshold,
        fpr=float(flagged[y == 0].mean()),
        recall=float(flagged[y == 1].mean()),
        by_category=by_category,
    )


# --- one call for a run --------------------------------------------------------------


def evaluation_metrics(
    frame: pl.DataFrame,
    *,
    score_col: str = "score",
    label_col: str = "TX_FRAUD",
    card_col: str = "CUSTOMER_ID",
    day_col: str = "TX_TIME_DAYS",
    category_col: str | None = "TX_FRAUD_SCENARIO",
    k: int = 100,
    max_fpr: float = 0.01,
) -> dict[str, float]:
    """Every metric of one assessed window, flat, with the names the registry gates on.

    Keys: ``auc_roc``, ``average_precision``, ``card_precision_at_{k}``,
    ``recall_at_fpr_{pct}`` and ``recall_at_fpr_{pct}_{category}`` (e.g.
    ``recall_at_fpr_1pct_2`` for scenario 2), ``pct`` formatted like ``1pct``/``0.5pct``.
    """
    labels = frame[label_col].to_numpy()
    scores = frame[score_col].to_numpy()
    cats = frame[category_col].to_numpy() if category_col is not None else None
    cp = card_precision_at_k(
        frame, k, score_col=score_col, label_col=label_col, card_col=card_col, day_col=day_col
    )
    rf = recall_at_fpr(labels, scores, cats, max_fpr=max_fpr)
    pct = f"{max_fpr * 100:g}pct"
    out = {
        "auc_roc": auc_roc(labels, scores),
        "average_precision": average_precision(labels, scores),
        f"card_precision_at_{k}": cp.mean,
        f"recall_at_fpr_{pct}": rf.recall,
    }
    out.update({f"recall_at_fpr_{pct}_{c}": r.recall for c, r in rf.by_category.items()})
    return out


def summarise_folds(per_fold: Sequence[dict[str, float]]) -> dict[str, float]:
    """``{name}_mean`` and ``{name}_std`` over folds, the handbook's "mean ± std".

    The std is the population one (``ddof=0``), as sklearn's ``GridSearchCV`` reports
    it and so as the handbook's tables do. Only metrics present in every fold are kept:
    a scenario absent from one test week would otherwise be averaged over fewer folds.
    """
    if not per_fold:
        raise ValueError("no folds to summarise")
    names = sorted(set.intersection(*(set(fold) for fold in per_fold)))
    out: dict[str, float] = {}
    for name in names:
        values = np.array([fold[name] for fold in per_fold], dtype=np.float64)
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_std"] = float(values.std())
    return out
