"""How much Card Precision@100 any engine can reach on a handbook fold.

The handbook says a perfect model reaches CP@100 ~0.42 on its test folds. That model
sees the future: most of the cards it catches were defrauded at a compromised terminal
(scenario 2) in the days before any fraud label from that terminal could have arrived.
Those payments are ordinary in every field (amount, card, time); the only thing that
marks them is the terminal's fraud history, and labels arrive 7 days late. So a
terminal's frauds within the label delay of its first fraud are unknowable at decision
time, by any model, and the *knowable* ceiling scores the fold with them counted as
legitimate-looking: every other fraud ranked first, these ranked with the legitimate
payments. The gap between an engine and the knowable ceiling is what better modelling
can still win; the gap from there to the perfect one needs faster labels.

Needs the handbook's ground truth with its ``scenario`` column (evaluation only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from training.evaluate import Prepared
from training.metrics import card_precision_at_k

# The handbook simulator's scenario number for a compromised terminal.
TERMINAL_SCENARIO = 2
# Orders the cards that tie (every legitimate one, every unknowable one) reproducibly.
_TIE_SEED = 0


@dataclass(frozen=True)
class Ceilings:
    perfect: float  # CP@100 of the ground truth itself
    knowable: float  # CP@100 of the ground truth, unknowable frauds counted as unseen


def unknowable_frauds(
    terminal_id: pl.Series,
    event_time_ms: pl.Series,
    scenario: pl.Series,
    first_terminal_fraud_ms: pl.DataFrame,
    delay_ms: int,
) -> npt.NDArray[np.bool_]:
    """True for a compromised-terminal fraud less than ``delay_ms`` after its terminal's
    first fraud (``first_terminal_fraud_ms``: ``terminal_id, first_ms``)."""
    rows = pl.DataFrame({"terminal_id": terminal_id, "_t": event_time_ms, "_s": scenario})
    joined = rows.join(first_terminal_fraud_ms, on="terminal_id", how="left", maintain_order="left")
    hidden = (joined["_s"] == TERMINAL_SCENARIO) & ((joined["_t"] - joined["first_ms"]) < delay_ms)
    return np.asarray(hidden.fill_null(False).to_numpy(), dtype=np.bool_)


def first_terminal_frauds(data: Prepared, truth: pl.DataFrame) -> pl.DataFrame:
    """Each compromised terminal's first fraud time, over everything loaded."""
    return (
        data.history.select("transaction_id", "terminal_id", "event_time_ms")
        .join(truth.select("transaction_id", "scenario"), on="transaction_id")
        .filter(pl.col("scenario") == TERMINAL_SCENARIO)
        .group_by("terminal_id")
        .agg(pl.col("event_time_ms").min().alias("first_ms"))
    )


def card_precision_ceilings(
    data: Prepared,
    rows: npt.NDArray[np.int64],
    truth: pl.DataFrame,
    first_terminal_fraud_ms: pl.DataFrame,
    *,
    delay_ms: int,
    k: int = 100,
) -> Ceilings:
    """Both ceilings on the assessed ``rows`` of one fold."""
    frame = (
        data.history[rows.tolist()]
        .select("transaction_id", "card_id", "terminal_id", "event_time_ms")
        .join(truth, on="transaction_id", how="left", maintain_order="left")
    )
    y = frame["is_fraud"].cast(pl.Float64).to_numpy()
    hidden = unknowable_frauds(
        frame["terminal_id"],
        frame["event_time_ms"],
        frame["scenario"],
        first_terminal_fraud_ms,
        delay_ms,
    )
    ties = 1e-9 * np.random.default_rng(_TIE_SEED).random(len(y))
    frame = frame.with_columns(
        pl.from_epoch("event_time_ms", time_unit="ms").alias("_when"),
        pl.Series("_perfect", y + ties),
        pl.Series("_knowable", y * ~hidden + ties),
    )

    def reach(score: str) -> float:
        return card_precision_at_k(
            frame, k, score_col=score, label_col="is_fraud", card_col="card_id", day_col="_when"
        ).mean

    return Ceilings(perfect=reach("_perfect"), knowable=reach("_knowable"))
