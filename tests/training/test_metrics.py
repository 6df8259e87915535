"""Handbook metrics: hand-computed examples, sklearn, and the handbook's own code.

``handbook_card_precision`` is a transcription of the handbook's pandas
``card_precision_top_k`` (chapter 4), kept here as the oracle the polars version must
agree with on random data.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from training.errors import MetricUndefinedError
from training.metrics import (
    auc_roc,
    average_precision,
    card_precision_at_k,
    evaluation_metrics,
    recall_at_fpr,
    summarise_folds,
)

Rows = list[tuple[int, str, float, int]]  # (day, card, score, label)


@pytest.fixture
def make_frame() -> Callable[..., pl.DataFrame]:
    def build(rows: Rows) -> pl.DataFrame:
        days, cards, scores, labels = zip(*rows, strict=True)
        return pl.DataFrame(
            {"TX_TIME_DAYS": days, "CUSTOMER_ID": cards, "score": scores, "TX_FRAUD": labels}
        )

    return build


@pytest.fixture
def make_random_frame() -> Callable[..., pl.DataFrame]:
    def build(seed: int, n: int = 4000, cards: int = 400, days: int = 7) -> pl.DataFrame:
        rng = np.random.default_rng(seed)
        label = (rng.random(n) < 0.06).astype(np.int64)
        return pl.DataFrame(
            {
                "TX_TIME_DAYS": rng.integers(0, days, n),
                "CUSTOMER_ID": rng.integers(0, cards, n),
                "TX_FRAUD": label,
                "TX_FRAUD_SCENARIO": np.where(label == 1, rng.integers(1, 4, n), 0),
                # continuous scores: no ties, so the oracle's unstable sort cannot differ
                "score": rng.random(n) + 0.4 * label,
            }
        )

    return build


def handbook_card_precision(df: pd.DataFrame, top_k: int) -> tuple[list[float], float]:
    detected_all: list[int] = []
    per_day: list[float] = []
    for day in sorted(df["TX_TIME_DAYS"].unique()):
        d = df[df["TX_TIME_DAYS"] == day][["score", "CUSTOMER_ID", "TX_FRAUD"]]
        d = d[~d.CUSTOMER_ID.isin(detected_all)]
        d = d.groupby("CUSTOMER_ID").max().sort_values(by="score", ascending=False)
        d = d.reset_index(drop=False).head(top_k)
        detected = list(d[d.TX_FRAUD == 1].CUSTOMER_ID)
        per_day.append(len(detected) / top_k)
        detected_all.extend(detected)
    return per_day, float(np.mean(per_day))


# --- AUC ROC, AP ---------------------------------------------------------------------


def test_auc_and_ap_on_a_hand_computed_example() -> None:
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    # pairs (pos, neg): (0.35>0.1), (0.35<0.4), (0.8>0.1), (0.8>0.4): 3 of 4
    assert auc_roc(labels, scores) == pytest.approx(0.75)
    # ranked 0.8(+) 0.4(-) 0.35(+): precision 1 at recall .5, 2/3 at recall 1
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_auc_and_ap_equal_sklearn(make_random_frame: Callable[..., pl.DataFrame]) -> None:
    frame = make_random_frame(seed=1)
    y, s = frame["TX_FRAUD"].to_numpy(), frame["score"].to_numpy()
    assert auc_roc(y, s) == roc_auc_score(y, s)
    assert average_precision(y, s) == average_precision_score(y, s)


@pytest.mark.parametrize("metric", [auc_roc, average_precision])
def test_single_class_is_a_typed_error(metric: Callable[..., float]) -> None:
    with pytest.raises(MetricUndefinedError) as err:
        metric([0, 0, 0], [0.1, 0.2, 0.3])
    assert err.value.metric == metric.__name__
    assert "both classes" in err.value.reason


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="equal length"):
        auc_roc([0, 1], [0.1])
    with pytest.raises(ValueError, match="0 or 1"):
        auc_roc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc_roc([0, 1], [0.1, float("nan")])


# --- Card Precision@k ----------------------------------------------------------------


def test_card_precision_by_hand(make_frame: Callable[..., pl.DataFrame]) -> None:
    frame = make_frame(
        [
            # day 0: A has a low-scored fraud and a high-scored genuine payment: card max
            # score 0.9 and max label 1, so A counts as a compromised card at 0.9.
            (0, "A", 0.9, 0),
            (0, "A", 0.1, 1),
            (0, "B", 0.8, 0),
            (0, "C", 0.7, 1),
            # day 1: A was caught on day 0 and is gone; top 2 of B, C, D are B and C.
            (1, "A", 0.95, 1),
            (1, "B", 0.6, 1),
            (1, "C", 0.5, 0),
            (1, "D", 0.4, 1),
            # day 2: a single card, a fraud: still divided by k
            (2, "E", 0.3, 1),
        ]
    )
    result = card_precision_at_k(frame, k=2)
    assert [d.precision for d in result.days] == [0.5, 0.5, 0.5]
    assert [d.detected_cards for d in result.days] == [("A",), ("B",), ("E",)]
    assert [d.compromised_cards for d in result.days] == [2, 2, 1]
    assert result.mean == pytest.approx(0.5)
    assert result.ceiling == pytest.approx((1.0 + 1.0 + 0.5) / 3)

    kept = card_precision_at_k(frame, k=2, remove_detected=False)
    assert [d.precision for d in kept.days] == [0.5, 1.0, 0.5]  # A and B on day 1


def test_card_precision_breaks_ties_by_card_id(make_frame: Callable[..., pl.DataFrame]) -> None:
    frame = make_frame([(0, "b", 0.5, 0), (0, "a", 0.5, 1), (0, "c", 0.5, 1)])
    result = card_precision_at_k(frame, k=1)
    assert result.days[0].detected_cards == ("a",)


def test_card_precision_equals_the_handbook_code(
    make_random_frame: Callable[..., pl.DataFrame],
) -> None:
    for seed in range(3):
        frame = make_random_frame(seed=seed)
        want_days, want_mean = handbook_card_precision(frame.to_pandas(), top_k=30)
        got = card_precision_at_k(frame, k=30)
        assert [d.precision for d in got.days] == want_days
        assert got.mean == pytest.approx(want_mean)


def test_card_precision_takes_calendar_days_from_a_datetime(
    make_frame: Callable[..., pl.DataFrame],
) -> None:
    by_index = make_frame([(0, "A", 0.9, 1), (0, "B", 0.1, 0), (1, "A", 0.9, 1), (1, "B", 0.2, 1)])
    start = datetime(2018, 8, 8)
    by_time = by_index.with_columns(
        TX_DATETIME=pl.Series(
            [start + timedelta(hours=h) for h in (1, 23, 24, 47)], dtype=pl.Datetime("ns")
        )
    )
    want = card_precision_at_k(by_index, k=1)
    got = card_precision_at_k(by_time, k=1, day_col="TX_DATETIME")
    assert [d.precision for d in got.days] == [d.precision for d in want.days] == [1.0, 1.0]
    assert [d.day for d in got.days] == [start.date(), start.date() + timedelta(days=1)]


def test_card_precision_rejects_empty_frames_and_bad_k(
    make_frame: Callable[..., pl.DataFrame],
) -> None:
    frame = make_frame([(0, "A", 0.9, 1)])
    with pytest.raises(MetricUndefinedError):
        card_precision_at_k(frame.clear(), k=1)
    with pytest.raises(ValueError, match="k must be"):
        card_precision_at_k(frame, k=0)


# --- recall at a fixed false-positive rate -------------------------------------------


def test_recall_at_fpr_by_hand() -> None:
    negatives = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    positives = [0.95, 0.85, 0.75, 0.05]
    categories = [0] * 10 + ["amount", "terminal", "terminal", "card"]
    result = recall_at_fpr([0] * 10 + [1] * 4, negatives + positives, categories, max_fpr=0.1)
    # 10 negatives at 10 %: one false positive allowed (0.9), so flag >= 0.85.
    assert result.threshold == 0.85
    assert result.fpr == pytest.approx(0.1)
    assert result.recall == pytest.approx(0.5)
    assert {c: (r.positives, r.detected) for c, r in result.by_category.items()} == {
        "amount": (1, 1),
        "terminal": (2, 1),
        "card": (1, 0),
    }
    assert result.by_category["terminal"].recall == 0.5


def test_recall_at_fpr_never_exceeds_the_budget_on_ties() -> None:
    # Two negatives tie at 0.9: flagging them would be 20 % > 10 %, so neither is.
    labels = [0] * 10 + [1, 1]
    scores = [0.9, 0.9] + [0.1] * 8 + [0.95, 0.9]
    result = recall_at_fpr(labels, scores, max_fpr=0.1)
    assert result.threshold == 0.95
    assert result.fpr == 0.0
    assert result.recall == 0.5


def test_recall_at_fpr_edges() -> None:
    everything = recall_at_fpr([0, 1], [0.9, 0.1], max_fpr=1.0)
    assert (everything.recall, everything.fpr) == (1.0, 1.0)
    nothing = recall_at_fpr([0, 1], [0.9, 0.1], max_fpr=0.0)
    assert (nothing.recall, nothing.fpr, nothing.threshold) == (0.0, 0.0, float("inf"))
    with pytest.raises(ValueError, match="max_fpr"):
        recall_at_fpr([0, 1], [0.1, 0.2], max_fpr=1.5)


@pytest.mark.parametrize("max_fpr", [0.001, 0.01, 0.05, 0.2])
def test_recall_at_fpr_is_the_best_roc_point_within_budget(
    make_random_frame: Callable[..., pl.DataFrame], max_fpr: float
) -> None:
    frame = make_random_frame(seed=7, n=20_000)
    # Coarse scores make many ties, the case an off-by-one would get wrong.
    y, s = frame["TX_FRAUD"].to_numpy(), np.round(frame["score"].to_numpy(), 2)
    fpr, tpr, _ = roc_curve(y, s)
    result = recall_at_fpr(y, s, max_fpr=max_fpr)
    assert result.recall == pytest.approx(tpr[fpr <= max_fpr].max())
    assert result.fpr <= max_fpr
    # The per-category counts add up to the overall recall.
    cats = frame["TX_FRAUD_SCENARIO"].to_numpy()
    by_cat = recall_at_fpr(y, s, cats, max_fpr=max_fpr).by_category
    assert set(by_cat) == {"1", "2", "3"}
    detected = sum(r.detected for r in by_cat.values())
    assert detected / int(y.sum()) == pytest.approx(result.recall)


def test_evaluation_metrics_names_and_values(
    make_random_frame: Callable[..., pl.DataFrame],
) -> None:
    frame = make_random_frame(seed=3)
    metrics = evaluation_metrics(frame, k=30)
    y, s = frame["TX_FRAUD"].to_numpy(), frame["score"].to_numpy()
    assert set(metrics) == {
        "auc_roc",
        "average_precision",
        "card_precision_at_30",
        "recall_at_fpr_1pct",
        "recall_at_fpr_1pct_1",
        "recall_at_fpr_1pct_2",
        "recall_at_fpr_1pct_3",
    }
    assert metrics["auc_roc"] == roc_auc_score(y, s)
    assert metrics["card_precision_at_30"] == card_precision_at_k(frame, k=30).mean
    assert all(isinstance(v, float) for v in metrics.values())


def test_summarise_folds_is_mean_and_population_std() -> None:
    folds = [
        {"auc_roc": 0.8, "recall_at_fpr_1pct_1": 1.0},
        {"auc_roc": 0.9},
        {"auc_roc": 0.85, "recall_at_fpr_1pct_1": 0.5},
    ]
    summary = summarise_folds(folds)
    assert set(summary) == {"auc_roc_mean", "auc_roc_std"}
    assert summary["auc_roc_mean"] == pytest.approx(0.85)
    assert summary["auc_roc_std"] == pytest.approx(np.sqrt((0.05**2 + 0.05**2) / 3))
    with pytest.raises(ValueError):
        summarise_folds([])
