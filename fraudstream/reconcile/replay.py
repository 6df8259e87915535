"""Simulated clearing as wire messages, in event-time order, for tests and demos.

``fraudstream.simulator`` produces pandas frames; these helpers turn them into the
``Authorization`` and ``Settlement`` messages the reconciler consumes. The simulator's
``injected`` column (ground truth) is deliberately dropped: it never goes on the wire.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime

import pandas as pd

from fraudstream.wire.schemas import SCHEMA_VERSION, Authorization, Settlement

Event = Authorization | Settlement


def _utc(value: pd.Timestamp) -> datetime:
    moment: datetime = value.to_pydatetime()
    return moment


def authorizations(transactions: pd.DataFrame, declined: Collection[str]) -> list[Authorization]:
    """One authorisation per simulated payment: declined for ids in ``declined``
    (response 59), approved (00) otherwise, at the payment's event time."""
    out = []
    for row in transactions[
        ["transaction_id", "card_id", "amount", "currency", "event_time"]
    ].itertuples(index=False):
        is_declined = row.transaction_id in declined
        at = _utc(row.event_time)
        out.append(
            Authorization(
                schema_version=SCHEMA_VERSION,
                transaction_id=row.transaction_id,
                card_id=row.card_id,
                approved=not is_declined,
                response_code="59" if is_declined else "00",
                review=False,
                timeout_default=False,
                amount=float(row.amount),
                currency=row.currency,
                decision="decline" if is_declined else "approve",
                score=0.99 if is_declined else 0.01,
                model_version="simulated",
                event_time=at,
                authorized_at=at,
            )
        )
    return out


def settlements(frame: pd.DataFrame) -> list[Settlement]:
    """The simulator's settlement rows as wire messages (without the ground truth)."""
    columns = ["settlement_id", "transaction_id", "card_id", "amount", "currency", "settled_at"]
    return [
        Settlement(
            schema_version=SCHEMA_VERSION,
            settlement_id=row.settlement_id,
            transaction_id=row.transaction_id,
            card_id=row.card_id,
            amount=float(row.amount),
            currency=row.currency,
            settled_at=_utc(row.settled_at),
            kind=row.kind,
        )
        for row in frame[[*columns, "kind"]].itertuples(index=False)
    ]


def event_time(event: Event) -> datetime:
    return event.event_time if isinstance(event, Authorization) else event.settled_at


def in_time_order(auths: list[Authorization], stls: list[Settlement]) -> Iterator[Event]:
    """Both streams merged by event time; an authorisation before a settlement at a tie."""
    keyed: list[tuple[datetime, int, int, Event]] = [
        (a.event_time, 0, i, a) for i, a in enumerate(auths)
    ]
    keyed += [(s.settled_at, 1, i, s) for i, s in enumerate(stls)]
    keyed.sort(key=lambda item: item[:3])
    return (item[3] for item in keyed)
