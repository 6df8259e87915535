"""CP@100 ceilings: which frauds no model can know of, and what that leaves reachable."""

from __future__ import annotations

import numpy as np
import polars as pl

from features.matrix import FeatureMatrix
from training.ceilings import (
    TERMINAL_SCENARIO,
    card_precision_ceilings,
    first_terminal_frauds,
    unknowable_frauds,
)
from training.evaluate import Prepared

DAY = 86_400_000
DELAY = 7 * DAY


def test_a_terminal_fraud_is_unknowable_only_within_the_delay_of_its_first() -> None:
    first = pl.DataFrame({"terminal_id": ["T"], "first_ms": [0]})
    hidden = unknowable_frauds(
        pl.Series(["T", "T", "T", "U", "T"]),
        pl.Series([3 * DAY, 8 * DAY, DELAY - 1, 3 * DAY, 2 * DAY]),
        pl.Series([TERMINAL_SCENARIO, TERMINAL_SCENARIO, TERMINAL_SCENARIO, 0, 3]),
        first,
        DELAY,
    )
    # day 3 and just under 7 days: hidden; day 8: labels of day 0 are in; a terminal
    # never compromised and a compromised card's fraud are not terminal frauds
    assert hidden.tolist() == [True, False, True, False, False]


def _fold() -> tuple[Prepared, pl.DataFrame]:
    """Day 1: card B defrauded at terminal T (its first fraud); day 9: card E at T,
    with T's first label long arrived; 30 legitimate cards each day."""
    ids, cards, terminals, times, fraud, scenario = [], [], [], [], [], []
    for day, (card, is_fraud) in ((1, ("B", 1)), (9, ("E", 1))):
        for i, (c, f) in enumerate([(card, is_fraud), *((f"L{day}-{j}", 0) for j in range(30))]):
            ids.append(f"{day}-{i}")
            cards.append(c)
            terminals.append("T" if f else f"X{i}")
            times.append(day * DAY + i * 1000)
            fraud.append(f)
            scenario.append(TERMINAL_SCENARIO if f else 0)
    history = pl.DataFrame(
        {"transaction_id": ids, "card_id": cards, "terminal_id": terminals, "event_time_ms": times}
    )
    truth = pl.DataFrame(
        {"transaction_id": ids, "is_fraud": fraud, "scenario": scenario},
        schema_overrides={"is_fraud": pl.Int8, "scenario": pl.Int8},
    )
    data = Prepared(history, pl.DataFrame(), FeatureMatrix.empty((), history.height))
    return data, truth


def test_the_knowable_ceiling_leaves_out_what_the_delay_hides() -> None:
    data, truth = _fold()
    rows = np.arange(data.history.height, dtype=np.int64)
    got = card_precision_ceilings(
        data, rows, truth, first_terminal_frauds(data, truth), delay_ms=DELAY, k=1
    )
    assert got.perfect == 1.0  # both days' top card is the defrauded one
    # day 1's fraud looks like the 30 legitimate payments (a 1-in-31 draw, seeded, lost);
    # day 9's is known through T's first fraud
    assert got.knowable == 0.5
