"""The handbook's prequential evaluation: which days train, which wait, which test.

Fraud labels arrive late (a cardholder disputes days after the payment), so the
handbook (``../shared/data/handbook/README.md``; Le Borgne et al., chapters 3 and 5)
trains on 7 days, leaves the next 7 unused (the *delay*: their labels would not be
known yet when the model goes live) and tests on the 7 after. Folds are shifted by one
test period; the mean ± std over 4 folds is the reported figure.

Two sets of folds are kept apart on purpose: hyperparameters are chosen on the
*validation* folds (test weeks from 2018-07-11) and only the final choice is assessed on
the *test* folds (test weeks from 2018-08-08), so the published bar is never tuned on.
The dates are the README's. The handbook's notebook code (``prequentialSplit`` from
``start_date_training_for_valid`` = 07-25 minus 14 days, shifted back) puts its
validation test weeks one week earlier, 07-04 to 07-25; pass that first week to
:func:`prequential_folds` to reproduce it.

Cards already known to be compromised are dropped from each test day, as the handbook
does: a blocked card is not a detection problem any more. On test day ``D`` a card is
known when it had a fraud on any day in ``[train_start, D - delay)``: the training
week, plus the delay-period days whose labels have arrived by ``D``.

Windows are half-open calendar-date intervals ``[start, end)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from training.errors import EmptyWindowError

# The first test week of each set of 4 folds, from the handbook README.
TEST_FIRST_WEEK = date(2018, 8, 8)
VALIDATION_FIRST_WEEK = date(2018, 7, 11)


@dataclass(frozen=True)
class Fold:
    index: int
    train_start: date
    train_end: date  # exclusive; also the first delay day
    test_start: date  # the day after the delay period
    test_end: date  # exclusive

    @property
    def delay_days(self) -> int:
        return (self.test_start - self.train_end).days

    def test_days(self) -> tuple[date, ...]:
        n = (self.test_end - self.test_start).days
        return tuple(self.test_start + timedelta(days=i) for i in range(n))


def fold_for_test_start(
    test_start: date,
    *,
    index: int = 0,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> Fold:
    """The fold whose test period starts on ``test_start``."""
    if train_days < 1 or test_days < 1 or delay_days < 0:
        raise ValueError("train_days and test_days must be >= 1 and delay_days >= 0")
    train_end = test_start - timedelta(days=delay_days)
    return Fold(
        index=index,
        train_start=train_end - timedelta(days=train_days),
        train_end=train_end,
        test_start=test_start,
        test_end=test_start + timedelta(days=test_days),
    )


def fold_for_train_start(
    train_start: date,
    *,
    index: int = 0,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> Fold:
    """The fold whose training starts on ``train_start`` (the handbook's own argument)."""
    return fold_for_test_start(
        train_start + timedelta(days=train_days + delay_days),
        index=index,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
    )


def prequential_folds(
    first_test_start: date,
    *,
    n_folds: int = 4,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
) -> tuple[Fold, ...]:
    """``n_folds`` folds in time order, each shifted by one test period from the last."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    return tuple(
        fold_for_test_start(
            first_test_start + timedelta(days=i * test_days),
            index=i,
            train_days=train_days,
            delay_days=delay_days,
            test_days=test_days,
        )
        for i in range(n_folds)
    )


def handbook_test_folds(*, n_folds: int = 4) -> tuple[Fold, ...]:
    """The handbook's prequential *test* folds: report these, never tune on them."""
    return prequential_folds(TEST_FIRST_WEEK, n_folds=n_folds)


def handbook_validation_folds(*, n_folds: int = 4) -> tuple[Fold, ...]:
    """The handbook's prequential *validation* folds: choose hyperparameters here."""
    return prequential_folds(VALIDATION_FIRST_WEEK, n_folds=n_folds)


# --- selecting rows ------------------------------------------------------------------


def _day(datetime_col: str) -> pl.Expr:
    return pl.col(datetime_col).dt.date()


def _between(datetime_col: str, start: date, end: date) -> pl.Expr:
    day = _day(datetime_col)
    return (day >= start) & (day < end)


def known_compromised_mask(
    frame: pl.DataFrame,
    fold: Fold,
    *,
    datetime_col: str = "TX_DATETIME",
    card_col: str = "CUSTOMER_ID",
    label_col: str = "TX_FRAUD",
) -> pl.Series:
    """True for each row of ``frame`` whose card was known compromised on the row's day.

    Known means: a fraud on that card on some day in ``[fold.train_start, day - delay)``.
    ``frame`` must hold those earlier days too (the training and delay periods), not
    only the rows being tested.
    """
    first_fraud = (
        frame.filter((pl.col(label_col) == 1) & (_day(datetime_col) >= fold.train_start))
        .group_by(card_col)
        .agg(_day(datetime_col).min().alias("_first_fraud"))
    )
    joined = frame.select(
        pl.col(card_col), _day(datetime_col).alias("_day"), pl.int_range(pl.len()).alias("_row")
    ).join(first_fraud, on=card_col, how="left")
    known = pl.col("_first_fraud").is_not_null() & (
        pl.col("_first_fraud") < pl.col("_day") - pl.duration(days=fold.delay_days)
    )
    return joined.sort("_row").select(known.alias("known_compromised"))["known_compromised"]


def split_fold(
    frame: pl.DataFrame,
    fold: Fold,
    *,
    datetime_col: str = "TX_DATETIME",
    card_col: str = "CUSTOMER_ID",
    label_col: str = "TX_FRAUD",
    drop_known_compromised: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) rows of ``fold``; the delay period is in neither.

    Raises ``EmptyWindowError`` when either window selects nothing (a fold outside the
    data's dates is a configuration mistake, not an empty result to average over).
    """
    train = frame.filter(_between(datetime_col, fold.train_start, fold.train_end))
    if train.height == 0:
        raise EmptyWindowError("train", fold.train_start, fold.train_end)
    test = frame.filter(_between(datetime_col, fold.test_start, fold.test_end))
    if test.height == 0:
        raise EmptyWindowError("test", fold.test_start, fold.test_end)
    if drop_known_compromised:
        history = frame.filter(_between(datetime_col, fold.train_start, fold.test_end))
        known = known_compromised_mask(
            history, fold, datetime_col=datetime_col, card_col=card_col, label_col=label_col
        )
        test_rows = _between(datetime_col, fold.test_start, fold.test_end)
        test = (
            history.with_columns(known)
            .filter(test_rows & ~pl.col("known_compromised"))
            .drop("known_compromised")
        )
    return train, test
