"""Clearing: how authorised payments settle, with known discrepancies injected.

Realistic clearing first: most payments settle once, in full, one to three days later;
e-commerce retail sometimes ships in parts (partial captures summing to the authorised
amount); restaurants add tips (up to ``max_tip_share`` above the authorisation); some
payments are refunded later (a ``refund`` row referencing the original transaction).

Then the discrepancies a reconciliation must find, each recorded as ground truth:
missing settlement (no row at all), amount mismatch (at least 30 % off, so beyond any
tip allowance), currency mismatch, duplicate settlement, and settlement of an unknown
authorisation. Each injected payment gets only one discrepancy and no tip, split or
refund, so the ground truth is unambiguous. "Settled while declined" depends on the
engine's decisions, so it is computed afterwards by :func:`settled_while_declined`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from fraudstream.simulator.config import ClearingConfig
from fraudstream.simulator.geography import ATM, CONTACTLESS, CURRENCIES, MCCS, ONLINE, POS
from fraudstream.simulator.population import Population
from fraudstream.simulator.rows import (
    MS_PER_DAY,
    IntArray,
    TxRows,
    full,
    ragged_offsets,
    rank_in_group,
)
from fraudstream.simulator.tokens import digits_for, fixed_width, labels, take, utc_times

SETTLEMENT_KINDS = ("capture", "partial_capture", "refund", "tip_adjusted")
CAPTURE, PARTIAL, REFUND, TIP = range(4)
DISCREPANCIES = (
    "none",
    "missing_settlement",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_settlement",
    "unknown_authorization",
)
NONE, MISSING, AMOUNT, CURRENCY, DUPLICATE, UNKNOWN = range(6)
SETTLED_WHILE_DECLINED = "settled_while_declined"
SETTLEMENT_COLUMNS = (
    "settlement_id", "transaction_id", "card_id", "amount", "currency", "settled_at", "kind",
    "injected",
)  # fmt: skip
_EUR, _USD = CURRENCIES.index("EUR"), CURRENCIES.index("USD")


class _Authorised(NamedTuple):
    """Per payment: authorised amount in cents, its currency, when it normally settles."""

    cents: IntArray
    currency: IntArray
    settle_ms: IntArray


class _Plan:
    """Settlement rows as parallel code arrays, appended block by block."""

    def __init__(self) -> None:
        self.blocks: list[tuple[IntArray, ...]] = []

    def add(
        self,
        tx: IntArray,
        *,
        cents: IntArray,
        currency: IntArray,
        at_ms: IntArray,
        kind: int,
        injected: IntArray | int = NONE,
    ) -> None:
        n = tx.shape[0]
        flags = np.broadcast_to(np.asarray(injected, dtype=np.int64), (n,))
        self.blocks.append((tx, cents, currency, at_ms.astype(np.int64), full(n, kind), flags))

    def columns(self) -> tuple[IntArray, ...]:
        """tx, cents, currency, at_ms, kind, injected; in settlement-time order."""
        cols = [np.concatenate([b[i] for b in self.blocks]) for i in range(6)]
        order = np.lexsort((cols[0], cols[3]))
        return tuple(c[order] for c in cols)


def _pick_discrepancies(cfg: ClearingConfig, rng: np.random.Generator, n: int) -> IntArray:
    """At most one injected discrepancy per payment, drawn without overlap."""
    special = full(n, NONE)
    order, used = rng.permutation(n), 0
    for code, rate in (
        (MISSING, cfg.missing_rate),
        (AMOUNT, cfg.amount_mismatch_rate),
        (CURRENCY, cfg.currency_mismatch_rate),
        (DUPLICATE, cfg.duplicate_rate),
    ):
        count = round(rate * n)
        special[order[used : used + count]] = code
        used += count
    return special


def build_settlements(
    cfg: ClearingConfig,
    rng: np.random.Generator,
    rows: TxRows,
    pop: Population,
    *,
    currency: IntArray,
    tx_ids: pa.StringArray,
    card_ids: pa.StringArray,
    start_ns: int,
    days: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (settlements, injected_discrepancies) for the time-sorted ``rows``."""
    n = len(rows)
    terms = pop.terminals
    mcc, kind = terms.mcc[rows.terminal], terms.kind[rows.terminal]
    cents = np.round(rows.amount * 100).astype(np.int64)
    delay = rng.uniform(*cfg.settle_delay_days, n) * MS_PER_DAY
    settle_ms = rows.time_ms + delay.astype(np.int64)

    special = _pick_discrepancies(cfg, rng, n)
    plain = special == NONE
    card_present = np.isin(rows.channel, (POS, CONTACTLESS))
    restaurant = (mcc == MCCS.index("5812")) & card_present
    tip = plain & restaurant & (rng.random(n) < cfg.tip_rate)
    shipped = np.isin(mcc, (MCCS.index("5999"), MCCS.index("5732"))) & (kind == ONLINE)
    partial = plain & shipped & (cents >= 300) & (rng.random(n) < cfg.partial_capture_rate)
    refund = plain & ~tip & (kind != ATM) & (rng.random(n) < cfg.refund_rate)

    plan = _Plan()
    amount = cents.copy()
    tip_share = rng.uniform(0.05, cfg.max_tip_share, n)
    amount[tip] = np.floor(cents[tip] * (1 + tip_share[tip])).astype(np.int64)
    off = special == AMOUNT
    factor = np.where(rng.random(n) < 0.5, rng.uniform(0.3, 0.7, n), rng.uniform(1.4, 2.5, n))
    amount[off] = np.maximum(np.round(cents[off] * factor[off]), 1).astype(np.int64)
    amount[off & (amount == cents)] += 100
    settled_currency = currency.copy()
    swapped = special == CURRENCY
    settled_currency[swapped] = np.where(currency[swapped] == _EUR, _USD, _EUR)
    injected = np.where(np.isin(special, (AMOUNT, CURRENCY)), special, NONE)
    single = np.flatnonzero((special != MISSING) & ~partial)
    for code, mask in ((CAPTURE, ~tip), (TIP, tip)):
        i = single[mask[single]]
        plan.add(
            i,
            cents=amount[i],
            currency=settled_currency[i],
            at_ms=settle_ms[i],
            kind=code,
            injected=injected[i],
        )

    dup = np.flatnonzero(special == DUPLICATE)
    later = rng.uniform(60_000, 6 * 3_600_000, dup.shape[0]).astype(np.int64)
    plan.add(
        dup,
        cents=cents[dup],
        currency=currency[dup],
        at_ms=settle_ms[dup] + later,
        kind=CAPTURE,
        injected=DUPLICATE,
    )
    auth = _Authorised(cents, currency, settle_ms)
    _add_partial_captures(plan, rng, np.flatnonzero(partial), auth)
    _add_refunds(plan, rng, np.flatnonzero(refund), auth)

    # Settlements nobody authorised: transaction ids past the last real one.
    m = round(cfg.unknown_authorization_rate * n)
    plan.add(
        n + np.arange(m, dtype=np.int64),
        cents=np.round(rng.lognormal(np.log(40.0), 0.8, m) * 100).astype(np.int64) + 1,
        currency=currency[rng.integers(0, n, m)] if n else full(m, _EUR),
        at_ms=(rng.uniform(1, days + 3, m) * MS_PER_DAY).astype(np.int64),
        kind=CAPTURE,
        injected=UNKNOWN,
    )
    unknown_ids = fixed_width("tx_", n + np.arange(m, dtype=np.int64), digits_for(n + m, 10))
    tx_card = np.concatenate([rows.card, rng.integers(0, len(pop.cards), m)])
    settlements = _settlements_frame(
        plan, pa.concat_arrays([tx_ids, unknown_ids]), card_ids, tx_card, start_ns
    )
    return settlements, _truth_frame(settlements, tx_ids, np.flatnonzero(special == MISSING))


def _add_partial_captures(
    plan: _Plan, rng: np.random.Generator, idx: IntArray, auth: _Authorised
) -> None:
    """Split shipments: two or three captures summing exactly to the authorised amount."""
    cents, currency, settle_ms = auth
    parts = rng.integers(2, 4, int(idx.shape[0]))
    starts = ragged_offsets(parts)
    tx = np.repeat(idx, parts)
    rank = rank_in_group(parts)
    weight = rng.random(tx.shape[0]) + 0.2
    group_weight = np.repeat(np.add.reduceat(weight, starts), parts) if idx.size else weight
    share = np.floor(cents[tx] * weight / group_weight).astype(np.int64)
    # The last part takes what rounding left over, so the parts sum to the authorisation.
    last = rank == np.repeat(parts, parts) - 1
    paid = np.repeat(np.add.reduceat(share, starts), parts) if idx.size else share
    share[last] += cents[tx[last]] - paid[last]
    gap = (rng.uniform(0.5, 5.0, tx.shape[0]) * MS_PER_DAY).astype(np.int64)
    at_ms = settle_ms[tx] + rank * gap
    plan.add(tx, cents=share, currency=currency[tx], at_ms=at_ms, kind=PARTIAL)


def _add_refunds(plan: _Plan, rng: np.random.Generator, idx: IntArray, auth: _Authorised) -> None:
    """Refunds in full or in part, days to weeks after the capture, citing the payment."""
    cents, currency, settle_ms = auth
    n = int(idx.shape[0])
    part = np.maximum(np.floor(cents[idx] * rng.uniform(0.2, 0.9, n)), 1).astype(np.int64)
    refunded = np.where(rng.random(n) < 0.7, cents[idx], part)
    at_ms = settle_ms[idx] + (rng.uniform(2, 30, n) * MS_PER_DAY).astype(np.int64)
    plan.add(idx, cents=refunded, currency=currency[idx], at_ms=at_ms, kind=REFUND)


def _settlements_frame(
    plan: _Plan,
    tx_ids: pa.StringArray,
    card_ids: pa.StringArray,
    tx_card: IntArray,
    start_ns: int,
) -> pd.DataFrame:
    tx, cents, currency, at_ms, kind, injected = plan.columns()
    count = int(tx.shape[0])
    return pd.DataFrame(
        {
            "settlement_id": fixed_width(
                "stl_", np.arange(count, dtype=np.int64), digits_for(count, 10)
            ).to_pandas(),
            "transaction_id": take(tx_ids, tx),
            "card_id": take(card_ids, tx_card[tx]),
            "amount": cents / 100.0,
            "currency": take(labels(CURRENCIES), currency),
            "settled_at": utc_times(start_ns + at_ms * 1_000_000),
            "kind": take(labels(SETTLEMENT_KINDS), kind),
            "injected": take(labels(DISCREPANCIES), injected),
        },
        columns=list(SETTLEMENT_COLUMNS),
    )


def _truth_frame(
    settlements: pd.DataFrame, tx_ids: pa.StringArray, missing: IntArray
) -> pd.DataFrame:
    flagged = settlements.loc[
        settlements["injected"] != DISCREPANCIES[NONE],
        ["transaction_id", "settlement_id", "injected"],
    ]
    absent = pd.DataFrame(
        {
            "transaction_id": take(tx_ids, missing),
            "settlement_id": pd.Series([None] * missing.shape[0], dtype="str"),
            "injected": pd.Series([DISCREPANCIES[MISSING]] * missing.shape[0], dtype="str"),
        }
    )
    truth = pd.concat([flagged, absent], ignore_index=True).rename(columns={"injected": "kind"})
    return truth.sort_values(["kind", "transaction_id"], kind="stable", ignore_index=True)


def settled_while_declined(settlements: pd.DataFrame, declined_ids: Iterable[str]) -> pd.DataFrame:
    """Settlements (refunds aside) of payments the engine declined: money moved anyway."""
    declined = pd.Index(list(declined_ids), dtype="str")
    hit = settlements["transaction_id"].isin(declined) & (settlements["kind"] != "refund")
    return settlements.loc[hit].reset_index(drop=True)


def expected_discrepancies(
    settlements: pd.DataFrame, injected: pd.DataFrame, declined_ids: Iterable[str]
) -> pd.DataFrame:
    """Everything a reconciliation should report once the engine's declines are known.

    The injected ground truth plus one ``settled_while_declined`` row per settlement of a
    declined payment, with the same columns as ``injected_discrepancies``.
    """
    declined = settled_while_declined(settlements, declined_ids)
    extra = pd.DataFrame(
        {
            "transaction_id": declined["transaction_id"],
            "settlement_id": declined["settlement_id"],
            "kind": pd.Series([SETTLED_WHILE_DECLINED] * len(declined), dtype="str"),
        }
    )
    out = pd.concat([injected, extra], ignore_index=True)
    return out.sort_values(["kind", "transaction_id"], kind="stable", ignore_index=True)
