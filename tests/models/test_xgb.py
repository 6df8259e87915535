from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from features.matrix import FeatureMatrix
from fraudstream.errors import UnsafeArtifactError
from models.base import ScoringBatch
from models.xgb import XGBoostParams, XGBoostScorer, balanced_bag, describe_feature
from tests.models.factories import make_batch

NAMES = ("amount_to_card_mean_30d", "card_tx_count_1d", "noise_a", "noise_b")


def _planted(rows: int, seed: int) -> tuple[FeatureMatrix, np.ndarray]:
    """Fraud when the amount ratio is high AND the card is busy; the rest is noise."""
    rng = np.random.default_rng(seed)
    ratio = rng.lognormal(0.0, 0.6, rows)
    count = rng.poisson(2.0, rows).astype(np.float64)
    values = np.column_stack([ratio, count, rng.normal(size=rows), rng.normal(size=rows)])
    signal = (ratio > 2.0) & (count >= 3)
    flips = rng.random(rows) < 0.003
    labels = (signal ^ flips).astype(np.int64)
    return FeatureMatrix(NAMES, values), labels


def _batch(features: FeatureMatrix) -> ScoringBatch:
    template = make_batch(1)
    return ScoringBatch(list(template.transactions) * len(features), features)


@pytest.fixture(scope="module")
def model() -> XGBoostScorer:
    features, labels = _planted(4000, seed=0)
    return XGBoostScorer.fit(features, labels, params=XGBoostParams(n_estimators=60))


def test_learns_a_planted_signal(model: XGBoostScorer) -> None:
    holdout, labels = _planted(3000, seed=1)
    assert roc_auc_score(labels, model.score(_batch(holdout))) > 0.9


def test_missing_values_are_handled_natively_not_imputed() -> None:
    # Missingness itself is the signal: an imputing model could not learn it.
    rng = np.random.default_rng(3)
    values = rng.normal(size=(3000, 2))
    labels = (rng.random(3000) < 0.5).astype(np.int64)
    values[labels == 1, 0] = np.nan
    model = XGBoostScorer.fit(
        FeatureMatrix(("a", "b"), values),
        labels,
        params=XGBoostParams(n_estimators=30, learning_rate=0.3),
    )
    probe = np.array([[np.nan, 0.0], [0.0, 0.0]])
    scores = model.score(_batch(FeatureMatrix(("a", "b"), probe)))
    assert scores[0] > 0.8 > 0.2 > scores[1]


def test_trains_from_a_dataframe_with_named_columns() -> None:
    features, labels = _planted(1500, seed=4)
    table = pd.DataFrame(features.values, columns=list(NAMES)).assign(unused=1.0)
    model = XGBoostScorer.fit(
        table, labels, feature_names=NAMES[:2], params=XGBoostParams(n_estimators=10)
    )
    assert model.feature_names == NAMES[:2]


def test_shap_contributions_add_up_to_the_score(model: XGBoostScorer) -> None:
    holdout, _ = _planted(200, seed=5)
    batch = _batch(holdout)
    margin = model.contributions(batch).sum(axis=1)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-margin)), model.score(batch), atol=1e-5)


def test_explanations_name_the_planted_features_in_words(model: XGBoostScorer) -> None:
    values = np.array([[5.1, 7.0, 0.0, 0.0]])
    batch = _batch(FeatureMatrix(NAMES, values))
    reasons = model.explain(batch, model.score(batch), top=2)[0]
    assert {r.code for r in reasons} == {"XGB_amount_to_card_mean_30d", "XGB_card_tx_count_1d"}
    texts = {r.text for r in reasons}
    assert "amount 5.1× the card's mean over the last 30 days" in texts
    assert "7 transactions on this card in the last day" in texts
    assert all(r.layer == "xgboost" for r in reasons)


def test_approximate_reasons_add_up_and_name_the_same_drivers(model: XGBoostScorer) -> None:
    holdout, _ = _planted(100, seed=11)
    batch = _batch(holdout)
    margin = model.contributions(batch, approximate=True).sum(axis=1)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-margin)), model.score(batch), atol=1e-5)
    suspect = _batch(FeatureMatrix(NAMES, np.array([[6.0, 9.0, 0.0, 0.0]])))
    scores = model.score(suspect)
    exact = {r.code for r in model.explain(suspect, scores, top=2)[0]}
    approx = {r.code for r in model.explain(suspect, scores, top=2, approximate=True)[0]}
    assert exact == approx == {"XGB_amount_to_card_mean_30d", "XGB_card_tx_count_1d"}


def test_a_harmless_row_gets_no_reasons_pushing_towards_fraud(model: XGBoostScorer) -> None:
    batch = _batch(FeatureMatrix(NAMES, np.array([[0.8, 0.0, 0.0, 0.0]])))
    scores = model.score(batch)
    reasons = model.explain(batch, scores, top=3)[0]
    contribs = model.contributions(batch)[0, :-1]
    assert len(reasons) == int((contribs > 0).sum()) <= 3


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("card_tx_count_1d", 1.0, "1 transaction on this card in the last day"),
        ("customer_id_nb_tx_7day_window", 3.0, "3 transactions on this card in the last 7 days"),
        (
            "terminal_fraud_rate_7d",
            0.25,
            "25% of this terminal's transactions with known outcome (last 7 days) were fraud",
        ),
        (
            "terminal_fraud_streak",
            3.0,
            "the terminal's last 3 transactions with known outcome were all fraud",
        ),
        ("amount", 1234.5, "amount 1,234.50"),
        ("is_night", 1.0, "made at night"),
        ("mystery", 3.25, "feature mystery = 3.25"),
        ("amount", float("nan"), "amount missing"),
    ],
)
def test_feature_phrases(name: str, value: float, text: str) -> None:
    assert describe_feature(name, value) == text


def test_scores_on_one_thread_after_fit_and_load(model: XGBoostScorer, tmp_path: Path) -> None:
    model.save(tmp_path)
    for booster in (model.booster, XGBoostScorer.load(tmp_path).booster):
        config = json.loads(booster.save_config())
        assert config["learner"]["generic_param"]["nthread"] == "1"


def test_saved_model_is_xgboost_ubj_readable_by_xgboost_alone(
    model: XGBoostScorer, tmp_path: Path
) -> None:
    model.save(tmp_path)
    plain = xgb.Booster(model_file=str(tmp_path / "model.ubj"))
    holdout, _ = _planted(50, seed=6)
    np.testing.assert_allclose(
        plain.inplace_predict(holdout.values.astype(np.float32)),
        model.score(_batch(holdout)),
        rtol=1e-6,
    )


def test_early_stopping_keeps_only_the_useful_trees() -> None:
    features, labels = _planted(3000, seed=7)
    held_out, held_labels = _planted(1000, seed=8)
    model = XGBoostScorer.fit(
        features,
        labels,
        params=XGBoostParams(n_estimators=400, learning_rate=0.3, early_stopping_rounds=10),
        eval_features=held_out,
        eval_labels=held_labels,
    )
    assert model.booster.num_boosted_rounds() < 400


def test_finer_histogram_bins_find_a_threshold_where_few_rows_lie() -> None:
    # Every amount above 220 is fraud, but few rows lie near it: 256 quantile bins put
    # no split there and frauds just above it score like the genuine rows just below.
    rng = np.random.default_rng(3)
    amount = np.concatenate([rng.uniform(0, 120, 20_000), rng.uniform(200, 240, 60)])
    labels = (amount > 220).astype(float)
    probe = FeatureMatrix(("amount",), np.array([[216.0], [224.0]]))
    gaps = {}
    for bins in (256, 4096):
        params = XGBoostParams(n_estimators=50, max_depth=2, max_bin=bins)
        train = FeatureMatrix(("amount",), amount[:, None])
        model = XGBoostScorer.fit(train, labels, params=params)
        below, above = model.score(_batch(probe))
        gaps[bins] = above - below
    assert gaps[256] < 0.1 < 0.5 < gaps[4096]


def test_version_names_the_content() -> None:
    features, labels = _planted(500, seed=9)
    params = XGBoostParams(n_estimators=5)
    a = XGBoostScorer.fit(features, labels, params=params)
    b = XGBoostScorer.fit(features, labels, params=params)
    c = XGBoostScorer.fit(features, 1 - labels, params=params)
    assert a.version == b.version != c.version
    assert XGBoostScorer.fit(features, labels, params=params, version="run-42").version == "run-42"


def test_rejects_labels_that_are_not_binary() -> None:
    features, _ = _planted(10, seed=10)
    with pytest.raises(ValueError, match="0 or 1"):
        XGBoostScorer.fit(features, np.arange(10))
    with pytest.raises(ValueError, match="labels for"):
        XGBoostScorer.fit(features, np.zeros(9))


# --- balanced bagging ----------------------------------------------------------------


def test_a_balanced_bag_keeps_every_fraud_and_the_asked_share_of_the_rest() -> None:
    y = np.array([1] * 10 + [0] * 1000)
    rng = np.random.default_rng(3)
    first, second = balanced_bag(y, 5.0, rng), balanced_bag(y, 5.0, rng)
    for bag in (first, second):
        assert set(np.flatnonzero(y == 1)) <= set(bag)
        assert len(bag) == 10 + 50 and len(set(bag)) == len(bag)
        assert list(bag) == sorted(bag)
    assert set(first) != set(second)  # each bag draws its own legitimate rows
    # Fewer legitimate rows than asked: all of them.
    assert len(balanced_bag(np.array([1, 0, 0]), 50.0, rng)) == 3


def test_bagged_layer_scores_the_mean_log_odds_and_explains_it(tmp_path: Path) -> None:
    features, labels = _planted(3000, seed=11)
    params = XGBoostParams(n_estimators=30, bags=3, negatives_per_positive=4)
    model = XGBoostScorer.fit(features, labels, params=params)
    assert len(model.boosters) == 3
    holdout, _ = _planted(200, seed=12)
    x = holdout.values.astype(np.float32)
    margins = [b.inplace_predict(x, predict_type="margin") for b in model.boosters]
    expected = 1.0 / (1.0 + np.exp(-np.mean(margins, axis=0)))
    batch = _batch(holdout)
    np.testing.assert_allclose(model.score(batch), expected, rtol=1e-6)
    # SHAP contributions (bias included) add up to the mean log-odds.
    np.testing.assert_allclose(
        model.contributions(batch).sum(axis=1), np.mean(margins, axis=0), rtol=1e-4, atol=1e-4
    )
    model.save(tmp_path)
    again = XGBoostScorer.load(tmp_path)
    assert len(again.boosters) == 3 and again.version == model.version
    np.testing.assert_array_equal(again.score(batch), model.score(batch))


def test_a_bagged_model_missing_a_booster_file_is_refused(tmp_path: Path) -> None:
    features, labels = _planted(1000, seed=13)
    params = XGBoostParams(n_estimators=5, bags=2, negatives_per_positive=4)
    XGBoostScorer.fit(features, labels, params=params).save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["name"] != "model-1.ubj"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafeArtifactError, match=r"model-1\.ubj"):
        XGBoostScorer.load(tmp_path)
