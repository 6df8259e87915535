"""Delayed truth: chargebacks weeks after the payment, investigator verdicts sooner.

Every fraud gets a label; a sample of genuine payments gets an investigator verdict
clearing it (the negatives a feedback loop actually sees). Label times can fall after
the simulated period, as they would in production: consumers filter on ``label_time``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudstream.simulator.config import LabelConfig
from fraudstream.simulator.rows import FloatArray, IntArray
from fraudstream.simulator.tokens import utc_times

LABEL_COLUMNS = (
    "transaction_id",
    "card_id",
    "terminal_id",
    "event_time",
    "label_time",
    "is_fraud",
    "source",
)
SOURCES = ("chargeback", "investigator")
_MS = 1_000_000  # ns


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> FloatArray:
    lo, hi = max(bounds[0], 1e-6), max(bounds[1], 1e-6)
    return np.asarray(np.exp(rng.uniform(np.log(lo), np.log(hi), n)), dtype=np.float64)


def build_labels(
    cfg: LabelConfig, rng: np.random.Generator, transactions: pd.DataFrame, event_ns: IntArray
) -> pd.DataFrame:
    """Labels for ``transactions`` (the final frame, with its ``event_time`` as int ns)."""
    n = len(transactions)
    fraud = transactions["is_fraud"].to_numpy() == 1
    cleared = ~fraud & (rng.random(n) < cfg.genuine_label_rate)
    index = np.flatnonzero(fraud | cleared)
    is_fraud = fraud[index]
    chargeback = is_fraud & (rng.random(index.shape[0]) < cfg.chargeback_share)
    delay_days = np.where(
        chargeback,
        _log_uniform(rng, cfg.chargeback_delay_days, index.shape[0]),
        _log_uniform(rng, cfg.investigator_delay_hours, index.shape[0]) / 24.0,
    )
    delay_ns = np.maximum(np.round(delay_days * 86_400_000), 1).astype(np.int64) * _MS
    label_ns = event_ns[index] + delay_ns
    order = np.argsort(label_ns, kind="stable")
    index, label_ns, is_fraud, chargeback = (
        index[order],
        label_ns[order],
        is_fraud[order],
        chargeback[order],
    )

    out = transactions.iloc[index][list(LABEL_COLUMNS[:4])].reset_index(drop=True)
    out["label_time"] = utc_times(label_ns)
    out["is_fraud"] = is_fraud.astype(np.int8)
    out["source"] = pd.array(np.where(chargeback, SOURCES[0], SOURCES[1]), dtype="str")
    return out
