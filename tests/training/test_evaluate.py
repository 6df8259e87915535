"""The layer ablation: which test rows count, what each row of the table scores, and a
whole (tiny) simulated protocol run producing every row."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from features.definitions import DAY_MS, LABEL_DELAY_MS
from features.matrix import FeatureMatrix
from fraudstream.settings import DEFAULT_CONFIG_FILE, load_settings
from fraudstream.simulator import LabelConfig, SimulatorConfig, generate
from tests.training.factories import last_day_batch, train_small_engine
from training.ceilings import Ceilings
from training.engine import TrainedEngine
from training.evaluate import (
    LAYERS,
    VARIANTS,
    Prepared,
    Window,
    ablation_scores,
    assessed_rows,
    known_compromised,
)
from training.evaluate_protocols import (
    HANDBOOK_PUBLISHED,
    WARMUP_DAYS,
    EvaluationResult,
    SimulatedProtocol,
    fold_window,
    midnight_ms,
    run_handbook,
    run_simulated,
)
from training.evaluate_report import markdown, rich_tables
from training.protocol import (
    Fold,
    handbook_test_folds,
    handbook_validation_folds,
    known_compromised_mask,
    split_fold,
)

RULES_FILE = DEFAULT_CONFIG_FILE.parent / "rules.toml"
DAY0 = date(2018, 8, 1)


def handbook_like(
    frauds: dict[str, list[int]], days: int = 21, cards: tuple[str, ...] = ("a", "b", "c", "d")
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One payment per card per day at noon from ``DAY0``; ``frauds[card]`` lists the
    fraudulent days. Returns (raw handbook-shaped rows, label table with labels arriving
    exactly 7 days after each payment, as ``features.sources.load_handbook`` makes them)."""
    rows = []
    for day in range(days):
        for card in cards:
            when = datetime(DAY0.year, DAY0.month, DAY0.day, 12) + timedelta(days=day)
            rows.append((card, when, int(day in frauds.get(card, []))))
    raw = pl.DataFrame(rows, schema=["CUSTOMER_ID", "TX_DATETIME", "TX_FRAUD"], orient="row")
    ms = raw["TX_DATETIME"].dt.replace_time_zone("UTC").dt.epoch("ms")
    labels = pl.DataFrame(
        {
            "card_id": raw["CUSTOMER_ID"],
            "event_time_ms": ms,
            "label_time_ms": ms + LABEL_DELAY_MS,
            "is_fraud": raw["TX_FRAUD"].cast(pl.Int8),
        }
    )
    return raw, labels


@pytest.mark.parametrize(
    "frauds",
    [
        {"a": [1], "b": [9], "c": [15]},
        {"a": [0, 1, 2], "d": [14, 20]},
        {},
    ],
)
def test_known_compromised_is_the_protocols_rule_on_handbook_labels(
    frauds: dict[str, list[int]],
) -> None:
    raw, labels = handbook_like(frauds)
    fold = handbook_like_fold()
    expected = known_compromised_mask(raw, fold).to_numpy()
    ours = known_compromised(
        raw["CUSTOMER_ID"],
        labels["event_time_ms"],
        labels,
        since_ms=midnight_ms(fold.train_start),
    )
    np.testing.assert_array_equal(ours, expected)
    if frauds:
        assert ours.any()


def test_known_compromised_uses_label_arrival_not_payment_time() -> None:
    raw, labels = handbook_like({"a": [1]})
    late = labels.with_columns(
        pl.when(pl.col("is_fraud") == 1)
        .then(pl.col("event_time_ms") + 12 * DAY_MS)
        .otherwise(pl.col("label_time_ms"))
        .alias("label_time_ms")
    )
    known = known_compromised(
        raw["CUSTOMER_ID"], late["event_time_ms"], late, since_ms=midnight_ms(DAY0)
    )
    days = (late["event_time_ms"].to_numpy() - midnight_ms(DAY0)) // DAY_MS
    a = raw["CUSTOMER_ID"].to_numpy() == "a"
    # Paid on day 1 at noon, label in at day 13 noon: known from day 14 on, only for "a".
    assert set(days[known]) == set(range(14, 21))
    assert known[a & (days >= 14)].all() and not known[~a].any()


def test_assessed_rows_drop_known_cards_and_keep_event_order() -> None:
    raw, labels = handbook_like({"b": [2]}, days=21)
    history = pl.DataFrame(
        {
            "transaction_id": [f"{i:06d}" for i in range(raw.height)],
            "event_time_ms": labels["event_time_ms"],
            "card_id": raw["CUSTOMER_ID"],
        }
    ).reverse()  # positions must come back in event order whatever the table order
    labels = labels.reverse().with_columns(transaction_id=history["transaction_id"])
    data = Prepared(history, labels, FeatureMatrix((), np.zeros((history.height, 0))))
    window = fold_window(handbook_like_fold(), 4, "t")
    rows = assessed_rows(data, window)
    chosen = history[rows.tolist()]
    assert chosen["event_time_ms"].is_sorted()
    assert chosen["event_time_ms"].min() >= window.test_start  # type: ignore[operator]
    assert "b" not in set(chosen["card_id"].to_list())  # fraud on day 2, known from day 10
    assert chosen.height == 7 * 3


def handbook_like_fold() -> Fold:
    """Train days 0-6, delay 7-13, test 14-20 of ``handbook_like``."""
    return Fold(0, DAY0, DAY0 + timedelta(7), DAY0 + timedelta(14), DAY0 + timedelta(21))


def test_handbook_fold_windows_split_the_training_week_in_time() -> None:
    for fold in (*handbook_validation_folds(), *handbook_test_folds()):
        window = fold_window(fold, 4, "f")
        assert window.split - window.train_start == 4 * DAY_MS
        assert window.train_end - window.split == 3 * DAY_MS
        # Every label of the training week is known when the test starts (7-day delay).
        assert window.known_before == window.test_start == window.train_end + LABEL_DELAY_MS
        assert window.layers.end_ms == window.ensemble.start_ms == window.split
    with pytest.raises(ValueError, match="layers_days"):
        fold_window(handbook_test_folds()[0], 7, "f")


def test_a_window_out_of_order_or_peeking_at_test_labels_is_refused() -> None:
    t = midnight_ms(DAY0)
    with pytest.raises(ValueError, match="out of order"):
        Window("w", t, t + 5 * DAY_MS, t + 3 * DAY_MS, t + 9 * DAY_MS, t + 9 * DAY_MS, t + 12)
    with pytest.raises(ValueError, match="labels known after"):
        Window("w", t, t + DAY_MS, t + 2 * DAY_MS, t + 4 * DAY_MS, t + 3 * DAY_MS, t + 5 * DAY_MS)


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory: pytest.TempPathFactory) -> TrainedEngine:
    return train_small_engine(tmp_path_factory.mktemp("engine") / "bundle")


def test_ablation_rows_are_the_live_engine_its_layers_and_its_fallbacks(
    small_engine: TrainedEngine,
) -> None:
    ensemble = small_engine.ensemble
    batch = last_day_batch(150)
    scores = ablation_scores(ensemble, batch)
    assert list(scores) == list(VARIANTS)
    # The full engine is exactly what runs live.
    np.testing.assert_allclose(scores["engine"], ensemble.score(batch))
    for name in ("xgboost", "gnn", "iforest"):
        np.testing.assert_array_equal(scores[f"{name} alone"], ensemble.layers[name].score(batch))
    assert ensemble.rules is not None
    np.testing.assert_array_equal(scores["rules alone"], ensemble.rules.score(batch))
    # Without a layer = the engine as it degrades when that layer's breaker is open.
    layer_scores = ensemble.layer_scores(batch)
    flags = ensemble.rules.evaluate(batch).flags()
    degraded = ensemble.meta.predict(
        {k: v for k, v in layer_scores.items() if k != "xgboost"}, flags, len(batch)
    )
    np.testing.assert_allclose(scores["without xgboost"], degraded)
    for values in scores.values():
        assert values.shape == (len(batch),) and np.isfinite(values).all()


TINY = SimulatedProtocol(
    seed=5,
    cards=300,
    terminals=100,
    fraud_rate=0.03,
    n_folds=2,
    warmup_days=2,
    train_days=6,
    layers_days=3,
    delay_days=2,
    test_days=3,
)


@pytest.fixture(scope="module")
def tiny_result() -> EvaluationResult:
    labels = LabelConfig(chargeback_delay_days=(0.2, 1.5), investigator_delay_hours=(1.0, 20.0))
    return run_simulated(RULES_FILE, TINY, quick=True, threads=1, labels_config=labels)


def test_simulated_protocol_reports_every_row_over_every_fold(
    tiny_result: EvaluationResult,
) -> None:
    assert list(tiny_result.summary) == list(VARIANTS)
    assert len(tiny_result.windows) == TINY.n_folds
    for name in VARIANTS:
        summary = tiny_result.summary[name]
        for metric in ("auc_roc", "average_precision", "card_precision_at_100"):
            assert 0.0 <= summary[f"{metric}_mean"] <= 1.0
            assert summary[f"{metric}_std"] >= 0.0
        assert len(tiny_result.per_fold[name]) == TINY.n_folds
    # Recall at 1 % FPR broken down by the simulator's attack patterns.
    attacks = [c for c in tiny_result.columns if c.startswith("recall_at_fpr_1pct_")]
    assert attacks and all(c.removeprefix("recall_at_fpr_1pct_") != "none" for c in attacks)
    assert tiny_result.summary["engine"]["auc_roc_mean"] > 0.6


def test_report_tables_hold_every_row_and_the_published_bar(
    tiny_result: EvaluationResult,
) -> None:
    text = markdown(tiny_result, "fraudstream evaluate --protocol simulated")
    for name in VARIANTS:
        assert f"| {name} |" in text
    assert "±" in text and "recall@1%FPR" in text
    # The engine fold by fold, to four decimals, and their mean.
    engine = tiny_result.per_fold["engine"]
    for window, fold in zip(tiny_result.windows, engine, strict=True):
        assert f"| {window} | {fold['auc_roc']:.4f} |" in text
    mean_ap = sum(f["average_precision"] for f in engine) / len(engine)
    assert f"**{mean_ap:.4f}**" in text
    handbook = EvaluationResult(
        "handbook", "test", ("ran",), tiny_result.summary, tiny_result.columns[:3]
    )
    text = markdown(handbook, "fraudstream evaluate")
    for model, *_ in HANDBOOK_PUBLISHED:
        assert model in text
    assert "can be reached" not in text  # no ceilings measured, no section
    assert len(rich_tables(handbook)) == 2 and len(rich_tables(tiny_result)) == 1
    # With CP@100 ceilings: each fold's engine beside them, and the share reached.
    ceilings = tuple(Ceilings(perfect=0.4, knowable=0.3) for _ in engine)
    reached = replace(handbook, windows=tiny_result.windows, per_fold=tiny_result.per_fold,
                      ceilings=ceilings)  # fmt: skip
    text = markdown(reached, "fraudstream evaluate")
    cp = engine[0]["card_precision_at_100"]
    assert f"| {tiny_result.windows[0]} | {cp:.4f} | 0.3000 | 0.4000 | {cp / 0.3:.0%} |" in text
    assert len(rich_tables(reached)) == 3
    nothing = replace(reached, ceilings=tuple(Ceilings(perfect=0.0, knowable=0.0) for _ in engine))
    assert "| 0.0000 | 0.0000 | n/a |" in markdown(nothing, "fraudstream evaluate")
    assert set(LAYERS) == {"xgboost", "gnn", "iforest", "rules"}


@pytest.mark.handbook
def test_assessed_rows_match_the_protocol_split_on_the_handbook() -> None:
    path = load_settings(None, {}).data.handbook_path
    if not path.is_file():
        pytest.skip(f"handbook data not found at {path}: see ../shared/data/handbook/README.md")
    from features.sources import load_handbook

    fold = handbook_test_folds()[0]
    history, labels = load_handbook(path, fold.train_start, fold.test_end)
    data = Prepared(history, labels, FeatureMatrix((), np.zeros((history.height, 0))))
    rows = assessed_rows(data, fold_window(fold, 4, "t"))
    raw = pl.read_parquet(path).filter(
        pl.col("TX_DATETIME").is_between(
            datetime(2018, 7, 25), datetime(2018, 8, 15), closed="left"
        )
    )
    _, test = split_fold(raw, fold)
    ours = {int(t) for t in history[rows.tolist()]["transaction_id"].to_list()}
    assert ours == set(test["TRANSACTION_ID"].to_list())
    assert datetime(2018, 8, 8, tzinfo=UTC).date() == fold.test_start


def write_handbook_like_parquet(path: Path, start: date, days: int) -> Path:
    """A small simulation written in the handbook's columns (ids as integers, naive
    times, scenario = attack pattern index), so the handbook protocol runs on it."""
    data = generate(
        SimulatorConfig(
            seed=2, n_cards=250, n_terminals=80, days=days, start=start, fraud_rate=0.03
        )
    )
    tx = data.transactions.sort_values(["event_time", "transaction_id"])
    when = pd.to_datetime(tx["event_time"], utc=True).dt.tz_localize(None)
    raw = pl.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(tx), dtype=np.int64),
            "TX_DATETIME": when.to_numpy(),
            "CUSTOMER_ID": pd.factorize(tx["card_id"])[0].astype(np.int64),
            "TERMINAL_ID": pd.factorize(tx["terminal_id"])[0].astype(np.int64),
            "TX_AMOUNT": tx["amount"].to_numpy(dtype=np.float64),
            "TX_FRAUD": tx["is_fraud"].to_numpy().astype(np.int64),
            "TX_FRAUD_SCENARIO": pd.factorize(tx["attack"])[0].astype(np.int64),
        }
    )
    raw.write_parquet(path)
    return path


def test_handbook_protocol_tunes_on_validation_then_reports_test_folds(tmp_path: Path) -> None:
    first_train = handbook_validation_folds(n_folds=1)[0].train_start
    start = first_train - timedelta(days=WARMUP_DAYS)
    last = handbook_test_folds(n_folds=1)[0].test_end
    path = write_handbook_like_parquet(tmp_path / "hb.parquet", start, (last - start).days)
    grid = ((2, 20), (4, 40))
    said: list[str] = []
    result = run_handbook(
        path, RULES_FILE, quick=True, n_folds=1, grid=grid, threads=1, say=said.append
    )
    assert result.windows == ("test 0 (2018-08-08)",)
    assert list(result.summary) == list(VARIANTS)
    assert [g.label for g in result.grid] == [
        "max_depth=2 n_estimators=20 learning_rate=0.1 min_child_weight=1",
        "max_depth=4 n_estimators=40 learning_rate=0.1 min_child_weight=1",
    ]
    best = max(result.grid, key=lambda g: g.ap_mean)
    assert result.chosen == best.label
    # Tuning saw only validation windows; the test window was trained once, afterwards.
    fitted = [m.split(":")[0] for m in said if "XGBoost" in m]
    assert fitted == ["validation 0 (2018-07-11)"] * 2 + ["test 0 (2018-08-08)"]
    assert "(chosen)" in markdown(result, "fraudstream evaluate")
    # The CP@100 ceilings of the test window, from its ground truth.
    (ceiling,) = result.ceilings
    assert 0.0 < ceiling.knowable <= ceiling.perfect <= 1.0
    validation = run_handbook(
        path, RULES_FILE, folds="validation", quick=True, n_folds=1, grid=grid, threads=1
    )
    assert validation.windows == ("validation 0 (2018-07-11)",)
    assert validation.chosen == result.chosen  # same data, same seeds: same choice
    chosen = next(g for g in validation.grid if g.label == validation.chosen)
    assert validation.summary["engine"]["average_precision_mean"] == pytest.approx(chosen.ap_mean)
