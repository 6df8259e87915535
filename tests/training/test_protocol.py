"""The prequential protocol, checked against the handbook README's own dates and counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from fraudstream.settings import Settings
from training.errors import EmptyWindowError
from training.metrics import card_precision_at_k
from training.protocol import (
    Fold,
    fold_for_test_start,
    fold_for_train_start,
    handbook_test_folds,
    handbook_validation_folds,
    known_compromised_mask,
    prequential_folds,
    split_fold,
)

FOLD = fold_for_test_start(date(2018, 8, 8))  # train 07-25..07-31, delay 08-01..08-07


@pytest.fixture
def make_transactions() -> Callable[..., pl.DataFrame]:
    """``make_transactions([(day, hh:mm, card, fraud), ...])`` in the handbook's columns."""

    def build(rows: list[tuple[date, str, int, int]]) -> pl.DataFrame:
        stamps = [datetime.combine(d, time.fromisoformat(hm)) for d, hm, _, _ in rows]
        return pl.DataFrame(
            {
                "TRANSACTION_ID": list(range(len(rows))),
                "TX_DATETIME": pl.Series(stamps, dtype=pl.Datetime("ns")),
                "CUSTOMER_ID": [card for _, _, card, _ in rows],
                "TX_FRAUD": [fraud for _, _, _, fraud in rows],
            }
        )

    return build


def test_test_folds_are_the_readme_weeks() -> None:
    folds = handbook_test_folds()
    assert [f.test_start for f in folds] == [
        date(2018, 8, 8),
        date(2018, 8, 15),
        date(2018, 8, 22),
        date(2018, 8, 29),
    ]
    assert [f.train_start for f in folds] == [
        date(2018, 7, 25),
        date(2018, 8, 1),
        date(2018, 8, 8),
        date(2018, 8, 15),
    ]
    for f in folds:
        assert (f.train_end - f.train_start).days == 7
        assert f.delay_days == 7
        assert (f.test_end - f.test_start).days == 7
        assert len(f.test_days()) == 7
    assert [f.index for f in folds] == [0, 1, 2, 3]


def test_validation_folds_are_the_readme_weeks_and_precede_the_test_weeks() -> None:
    folds = handbook_validation_folds()
    assert [f.test_start for f in folds] == [
        date(2018, 7, 11),
        date(2018, 7, 18),
        date(2018, 7, 25),
        date(2018, 8, 1),
    ]
    assert [f.train_start for f in folds] == [
        date(2018, 6, 27),
        date(2018, 7, 4),
        date(2018, 7, 11),
        date(2018, 7, 18),
    ]
    # No validation test day is a test-fold test day.
    first_test_day = handbook_test_folds()[0].test_start
    assert all(f.test_end <= first_test_day for f in folds)


def test_folds_shift_by_the_test_period() -> None:
    folds = prequential_folds(date(2018, 8, 8), n_folds=3, train_days=14, delay_days=3, test_days=5)
    assert folds[0] == Fold(
        index=0,
        train_start=date(2018, 7, 22),
        train_end=date(2018, 8, 5),
        test_start=date(2018, 8, 8),
        test_end=date(2018, 8, 13),
    )
    assert [f.test_start for f in folds] == [date(2018, 8, 8), date(2018, 8, 13), date(2018, 8, 18)]
    with pytest.raises(ValueError):
        prequential_folds(date(2018, 8, 8), n_folds=0)


def test_a_fold_from_its_training_start_is_the_same_fold() -> None:
    for fold in handbook_test_folds() + handbook_validation_folds():
        assert fold_for_train_start(fold.train_start, index=fold.index) == fold


def test_split_boundaries_are_half_open_days(
    make_transactions: Callable[..., pl.DataFrame],
) -> None:
    frame = make_transactions(
        [
            (date(2018, 7, 24), "23:59:59", 1, 0),  # before training
            (date(2018, 7, 25), "00:00:00", 2, 0),  # first training second
            (date(2018, 7, 31), "23:59:59", 3, 0),  # last training second
            (date(2018, 8, 1), "00:00:00", 4, 0),  # delay
            (date(2018, 8, 7), "23:59:59", 5, 0),  # delay
            (date(2018, 8, 8), "00:00:00", 6, 0),  # first test second
            (date(2018, 8, 14), "23:59:59", 7, 0),  # last test second
            (date(2018, 8, 15), "00:00:00", 8, 0),  # after
        ]
    )
    train, test = split_fold(frame, FOLD)
    assert train["CUSTOMER_ID"].to_list() == [2, 3]
    assert test["CUSTOMER_ID"].to_list() == [6, 7]
    assert test.columns == frame.columns


def test_known_compromised_cards_leave_the_test_days(
    make_transactions: Callable[..., pl.DataFrame],
) -> None:
    d = date.fromisoformat
    rows = [
        (d("2018-07-20"), "12:00", 10, 1),  # fraud before training: not known to this fold
        (d("2018-07-28"), "12:00", 11, 1),  # fraud in training: known on every test day
        (d("2018-08-01"), "12:00", 12, 1),  # fraud on delay day 0: known from test day 1
        (d("2018-08-07"), "12:00", 13, 1),  # last delay day: known from 08-15, after the fold
        (d("2018-08-08"), "09:00", 14, 1),  # fraud on a test day: the model's job to find
        (d("2018-07-28"), "12:00", 15, 0),  # genuine in training: stays
    ]
    for card in (10, 11, 12, 13, 14, 15):
        rows += [(d("2018-08-08"), "10:00", card, 0), (d("2018-08-09"), "10:00", card, 0)]
    frame = make_transactions(rows)
    _, test = split_fold(frame, FOLD)
    kept = {(r["TX_DATETIME"].date().day, r["CUSTOMER_ID"]) for r in test.iter_rows(named=True)}
    assert kept == {
        (8, 10), (9, 10),
        (8, 12),
        (8, 13), (9, 13),
        (8, 14), (9, 14),
        (8, 15), (9, 15),
    }  # fmt: skip
    # Without the rule every test-day row is kept.
    _, everything = split_fold(frame, FOLD, drop_known_compromised=False)
    assert everything.height == 13


def test_known_compromised_mask_is_row_aligned(
    make_transactions: Callable[..., pl.DataFrame],
) -> None:
    frame = make_transactions(
        [
            (date(2018, 8, 9), "10:00", 1, 0),
            (date(2018, 7, 26), "10:00", 1, 1),
            (date(2018, 8, 9), "11:00", 2, 0),
        ]
    )
    assert known_compromised_mask(frame, FOLD).to_list() == [True, False, False]


def test_empty_windows_are_typed_errors(make_transactions: Callable[..., pl.DataFrame]) -> None:
    only_training = make_transactions([(date(2018, 7, 26), "10:00", 1, 0)])
    with pytest.raises(EmptyWindowError) as err:
        split_fold(only_training, FOLD)
    assert (err.value.window, err.value.start, err.value.end) == (
        "test",
        date(2018, 8, 8),
        date(2018, 8, 15),
    )
    only_test = make_transactions([(date(2018, 8, 9), "10:00", 1, 0)])
    with pytest.raises(EmptyWindowError, match="train"):
        split_fold(only_test, FOLD)


# --- the real benchmark ----------------------------------------------------------------


def handbook_get_train_test_set(
    df: pd.DataFrame,
    start: datetime,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_test: int = 7,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The handbook's ``get_train_test_set`` (chapter 3.3), transcribed as the oracle."""
    end = start + timedelta(days=delta_train)
    train = df[df.TX_DATETIME.between(start, end, inclusive="left")]
    known = set(train[train.TX_FRAUD == 1].CUSTOMER_ID)
    first = train.TX_TIME_DAYS.min()
    test = []
    for day in range(delta_test):
        test_day = df[df.TX_TIME_DAYS.eq(first + delta_train + delta_delay + day)]
        delay_day = df[df.TX_TIME_DAYS.eq(first + delta_train + day - 1)]
        known |= set(delay_day[delay_day.TX_FRAUD == 1].CUSTOMER_ID)
        test.append(test_day[~test_day.CUSTOMER_ID.isin(known)])
    return train, pd.concat(test)


@pytest.fixture
def handbook(unit_settings: Settings) -> pl.DataFrame:
    path: Path = unit_settings.data.handbook_path
    if not path.exists():
        pytest.skip(f"handbook data not found at {path} (see ../shared/data/handbook/README.md)")
    return pl.read_parquet(path)


@pytest.mark.handbook
def test_handbook_split_equals_the_handbook_code(handbook: pl.DataFrame) -> None:
    window = handbook.filter(pl.col("TX_DATETIME") >= datetime(2018, 7, 1))
    pdf = window.to_pandas()
    for fold in handbook_test_folds():
        train, test = split_fold(window, fold)
        want_train, want_test = handbook_get_train_test_set(
            pdf, datetime.combine(fold.train_start, time())
        )
        assert train["TRANSACTION_ID"].to_list() == want_train.TRANSACTION_ID.tolist()
        assert test["TRANSACTION_ID"].sort().to_list() == sorted(want_test.TRANSACTION_ID)
    # The sizes the handbook prints for its first fold (start 2018-07-25).
    train, test = split_fold(window, handbook_test_folds()[0])
    assert (train.height, test.height) == (67240, 58264)


@pytest.mark.handbook
def test_handbook_perfect_ranking_reaches_the_readme_ceiling(handbook: pl.DataFrame) -> None:
    # README: "A perfect model reaches CP@100 ≈ 0.42 on the prequential test folds".
    means = []
    for fold in handbook_test_folds():
        _, test = split_fold(handbook, fold)
        perfect = test.with_columns(score=pl.col("TX_FRAUD").cast(pl.Float64))
        result = card_precision_at_k(perfect, k=100)
        assert result.mean == pytest.approx(result.ceiling)
        means.append(result.mean)
    assert sum(means) / len(means) == pytest.approx(0.42, abs=0.01)
