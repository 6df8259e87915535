"""The feature-store benchmark's stream: history to warm the state, then what is
measured, with the fraud labels in the order they become known (``bench_feature_store``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from features.definitions import LABEL_DELAY_MS
from features.table import epoch_ms
from fraudstream.wire.schemas import LabelEvent, Transaction


@dataclass(frozen=True)
class Stream:
    source: str
    warm: list[Transaction]  # warms the state
    measure: list[Transaction]  # follows it; what is measured
    labels: list[tuple[int, LabelEvent]]  # (label time ms, label), by label time


def handbook_stream(path: Path, warm_days: int, measure_tx: int) -> Stream:
    import pandas as pd

    columns = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"]
    raw = pd.read_parquet(path, columns=[*columns, "TX_FRAUD"])
    cut = raw.TX_DATETIME.iloc[0].normalize() + pd.Timedelta(days=warm_days)
    n_warm = int(raw.TX_DATETIME.searchsorted(cut))
    raw = raw.iloc[: n_warm + measure_tx]
    when = list(raw.TX_DATETIME.dt.tz_localize("UTC").dt.to_pydatetime())
    txs = [
        Transaction(
            schema_version=1,
            transaction_id=f"{tid:010d}",
            event_time=at,
            card_id=f"C{cust}",
            terminal_id=f"T{term}",
            amount=float(amount),
            currency="EUR",
        )
        for tid, at, cust, term, amount in zip(
            raw.TRANSACTION_ID.tolist(),
            when,
            raw.CUSTOMER_ID.tolist(),
            raw.TERMINAL_ID.tolist(),
            raw.TX_AMOUNT.tolist(),
            strict=True,
        )
    ]
    delay = timedelta(milliseconds=LABEL_DELAY_MS)
    labels = [
        (
            epoch_ms(tx.event_time) + LABEL_DELAY_MS,
            LabelEvent(
                schema_version=1,
                transaction_id=tx.transaction_id,
                card_id=tx.card_id,
                terminal_id=tx.terminal_id,
                event_time=tx.event_time,
                label_time=tx.event_time + delay,
                is_fraud=True,
                source="chargeback",
            ),
        )
        for tx, fraud in zip(txs, raw.TX_FRAUD.tolist(), strict=True)
        if fraud
    ]
    first, last = txs[0].event_time, txs[-1].event_time
    source = (
        f"handbook ({path.name}, {len(txs):,} transactions {first:%Y-%m-%d} to "
        f"{last:%Y-%m-%d %H:%M}; {len(labels):,} fraud labels known 7 days after the payment; "
        "no device, IP, location or merchant category, so those features are NaN)"
    )
    return Stream(source, txs[:n_warm], txs[n_warm:], sorted(labels, key=lambda x: x[0]))


def simulated_stream(warm_days: int, measure_tx: int) -> Stream:
    from fraudstream.simulator import SimulatorConfig, generate
    from fraudstream.simulator.encode import to_transactions

    cfg = SimulatorConfig(seed=1, n_cards=5_000, n_terminals=2_000, days=warm_days + 3)
    data = generate(cfg)
    frame = data.transactions
    txs = to_transactions(frame)
    cut = datetime.combine(cfg.start, datetime.min.time(), tzinfo=UTC) + timedelta(days=warm_days)
    n_warm = sum(1 for tx in txs if tx.event_time < cut)
    mcc = dict(zip(frame.transaction_id.tolist(), frame.mcc.tolist(), strict=True))
    labels = []
    for row in data.labels.itertuples(index=False):
        label_time = row.label_time.to_pydatetime()
        labels.append(
            (
                epoch_ms(label_time),
                LabelEvent(
                    schema_version=1,
                    transaction_id=row.transaction_id,
                    card_id=row.card_id,
                    terminal_id=row.terminal_id,
                    event_time=row.event_time.to_pydatetime(),
                    label_time=label_time,
                    is_fraud=bool(row.is_fraud),
                    source=row.source,
                    mcc=mcc.get(row.transaction_id),
                ),
            )
        )
    txs = txs[: n_warm + measure_tx]
    source = (
        f"simulator (seed 1, {cfg.n_cards:,} cards, {cfg.n_terminals:,} terminals; "
        f"{len(txs):,} transactions with device, IP, location and merchant category; "
        f"{len(labels):,} delayed labels)"
    )
    return Stream(source, txs[:n_warm], txs[n_warm:], sorted(labels, key=lambda x: x[0]))
