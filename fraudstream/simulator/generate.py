"""``generate(config)``: population, genuine payments, attacks, labels and clearing.

Every stage draws from its own random stream, derived from the seed and the stage, so
the output depends on the configuration alone (same config, byte-identical frames) and
changing one stage's settings does not reshuffle the others' randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from fraudstream.simulator.attacks import account_takeover, card_testing, fraud_ring
from fraudstream.simulator.attacks_present import compromised_terminals, high_amount
from fraudstream.simulator.clearing import build_settlements
from fraudstream.simulator.config import ATTACKS, SimulatorConfig
from fraudstream.simulator.genuine import genuine_transactions
from fraudstream.simulator.geography import (
    CHANNELS,
    COUNTRIES,
    COUNTRY_CURRENCY,
    CURRENCIES,
    MCCS,
)
from fraudstream.simulator.labels import build_labels
from fraudstream.simulator.population import Population, build_population
from fraudstream.simulator.rows import FINGERPRINT_BASE, AddressBook, IntArray, TxRows
from fraudstream.simulator.tokens import (
    digits_for,
    fixed_width,
    ipv4,
    labels,
    take,
    tokens,
    utc_times,
)

TRANSACTION_COLUMNS = (
    "transaction_id", "event_time", "card_id", "terminal_id", "merchant_id", "amount",
    "currency", "device_id", "ip", "country", "mcc", "latitude", "longitude", "channel",
    "is_fraud", "attack",
)  # fmt: skip
_STAGES = (
    "population", "genuine", "compromised_terminal", "card_testing", "account_takeover",
    "fraud_ring", "high_amount", "labels", "clearing", "keys",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimulatedData:
    """Everything one simulation run produced; see the package docstring for columns."""

    config: SimulatorConfig
    transactions: pd.DataFrame
    labels: pd.DataFrame
    settlements: pd.DataFrame
    injected_discrepancies: pd.DataFrame
    # transaction_id, attack, episode (e.g. "fraud_ring-3"): which burst, ring or
    # takeover each fraudulent row belongs to, for per-episode evaluation.
    episodes: pd.DataFrame


def _rng(cfg: SimulatorConfig, stage: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _STAGES.index(stage)])


def generate(cfg: SimulatorConfig | None = None) -> SimulatedData:
    cfg = cfg or SimulatorConfig()
    book = AddressBook()
    pop = build_population(cfg, _rng(cfg, "population"), book)
    genuine = genuine_transactions(cfg, pop, _rng(cfg, "genuine"), book)

    # Fraud rows that are added (all but compromised terminals, which relabel genuine
    # rows) also grow the total, so solve for the count that lands on the asked rate.
    shares = cfg.attack_mix.shares()
    relabelled = shares["compromised_terminal"]
    total_fraud = cfg.fraud_rate * len(genuine) / (1.0 - cfg.fraud_rate * (1.0 - relabelled))
    target = {name: total_fraud * share for name, share in shares.items()}

    parts = [
        compromised_terminals(
            cfg, pop, _rng(cfg, "compromised_terminal"), genuine, target["compromised_terminal"]
        ),
        card_testing(cfg, pop, _rng(cfg, "card_testing"), book, target["card_testing"]),
        account_takeover(cfg, pop, _rng(cfg, "account_takeover"), book, target["account_takeover"]),
        fraud_ring(cfg, pop, _rng(cfg, "fraud_ring"), book, target["fraud_ring"]),
        high_amount(cfg, pop, _rng(cfg, "high_amount"), target["high_amount"]),
    ]
    rows = TxRows.concat(parts)
    rows = rows.take(np.argsort(rows.time_ms, kind="stable"))

    start_ns = int(datetime.combine(cfg.start, datetime.min.time(), tzinfo=UTC).timestamp()) * 10**9
    event_ns = start_ns + rows.time_ms * 1_000_000
    keys = _rng(cfg, "keys").integers(0, 1 << 40, 2)
    card_ids = tokens("card_", len(pop.cards), int(keys[0]))
    tx_ids = fixed_width("tx_", np.arange(len(rows), dtype=np.int64), digits_for(len(rows), 10))
    currency = COUNTRY_CURRENCY[pop.terminals.country[rows.terminal]].astype(np.int64)
    transactions = _transactions_frame(
        rows,
        pop,
        book,
        tx_ids=tx_ids,
        card_ids=card_ids,
        currency=currency,
        event_ns=event_ns,
        device_key=int(keys[1]),
    )

    settlements, injected = build_settlements(
        cfg.clearing,
        _rng(cfg, "clearing"),
        rows,
        pop,
        currency=currency,
        tx_ids=tx_ids,
        card_ids=card_ids,
        start_ns=start_ns,
        days=cfg.days,
    )
    return SimulatedData(
        config=cfg,
        transactions=transactions,
        labels=build_labels(cfg.labels, _rng(cfg, "labels"), transactions, event_ns),
        settlements=settlements,
        injected_discrepancies=injected,
        episodes=_episodes_frame(transactions, rows),
    )


def _device_ids(book: AddressBook, n_terminals: int, codes: IntArray, key: int) -> pd.Series:
    personal = tokens("dev_", book.n_devices, key)
    fingerprints = fixed_width(
        "tfp_", np.arange(n_terminals, dtype=np.int64), digits_for(n_terminals)
    )
    index = np.where(codes >= FINGERPRINT_BASE, codes - FINGERPRINT_BASE + book.n_devices, codes)
    return take(pa.concat_arrays([personal, fingerprints]), index)


def _transactions_frame(
    rows: TxRows,
    pop: Population,
    book: AddressBook,
    *,
    tx_ids: pa.StringArray,
    card_ids: pa.StringArray,
    currency: IntArray,
    event_ns: IntArray,
    device_key: int,
) -> pd.DataFrame:
    terms = pop.terminals
    n_terms = len(terms)
    n_merchants = int(terms.merchant.max()) + 1
    terminal_ids = fixed_width("T", np.arange(n_terms, dtype=np.int64), digits_for(n_terms))
    merchant_ids = fixed_width("M", np.arange(n_merchants, dtype=np.int64), digits_for(n_merchants))
    return pd.DataFrame(
        {
            "transaction_id": tx_ids.to_pandas(),
            "event_time": utc_times(event_ns),
            "card_id": take(card_ids, rows.card),
            "terminal_id": take(terminal_ids, rows.terminal),
            "merchant_id": take(merchant_ids, terms.merchant[rows.terminal]),
            "amount": rows.amount.astype(np.float64),
            "currency": take(labels(CURRENCIES), currency),
            "device_id": _device_ids(book, n_terms, rows.device, device_key),
            "ip": take(ipv4(book.ip_values()), rows.ip),
            "country": take(labels(COUNTRIES), rows.country),
            "mcc": take(labels(MCCS), terms.mcc[rows.terminal]),
            "latitude": np.round(rows.lat, 5),
            "longitude": np.round(rows.lon, 5),
            "channel": take(labels(CHANNELS), rows.channel),
            "is_fraud": (rows.attack != 0).astype(np.int8),
            "attack": take(labels(ATTACKS), rows.attack),
        },
        columns=list(TRANSACTION_COLUMNS),
    )


def _episodes_frame(transactions: pd.DataFrame, rows: TxRows) -> pd.DataFrame:
    fraud = np.flatnonzero(rows.attack != 0)
    out = transactions.iloc[fraud][["transaction_id", "attack"]].reset_index(drop=True)
    out["episode"] = out["attack"] + "-" + pd.Series(rows.episode[fraud]).astype("str")
    return out
