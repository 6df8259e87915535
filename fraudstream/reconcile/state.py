"""The reconciler's memory, as msgspec structs that round-trip through plain JSON.

Times are integer milliseconds of event time since the Unix epoch and amounts integer
hundredths of the major unit, so matching is exact arithmetic. ``to_builtins`` /
``from_builtins`` give the dicts a changelog-backed Faust table stores.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from fraudstream.wire.schemas import Authorization, Settlement, SettlementKind

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Status = Literal["open", "closed"]


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def to_cents(amount: float) -> int:
    return round(amount * 100)


class AuthView(msgspec.Struct, kw_only=True):
    """What matching needs of an authorisation."""

    approved: bool
    cents: int
    currency: str
    event_ms: int


class SettlementView(msgspec.Struct, kw_only=True):
    """A settlement kept while it waits for its authorisation."""

    settlement_id: str
    kind: SettlementKind
    cents: int
    currency: str
    at_ms: int
    card_id: str
    reported: bool = False  # already reported as settlement_without_authorization


class TxState(msgspec.Struct, kw_only=True):
    """Everything known about one payment; keyed by its transaction id."""

    transaction_id: str
    card_id: str
    auth: AuthView | None = None
    pending: list[SettlementView] = msgspec.field(default_factory=list)
    seen: list[str] = msgspec.field(default_factory=list)  # settlement ids applied
    captured: int = 0  # cents captured in the authorised currency
    refunded: int = 0
    captures: int = 0  # non-refund settlements applied, whatever their currency
    full: bool = False  # fully captured: nothing more should be captured
    status: Status = "closed"
    due_ms: int | None = None  # while open: when the next deadline falls
    last_ms: int = 0  # latest event time that touched this payment


class Totals(msgspec.Struct, kw_only=True):
    """Running counts. ``open`` always equals ``opened - closed``."""

    authorizations: int = 0
    settlements: int = 0
    redelivered: int = 0  # repeats of an authorisation or settlement id, ignored
    matched: int = 0  # settlements matched to their authorisation without exception
    opened: int = 0
    closed: int = 0
    open: int = 0
    evicted: int = 0
    exceptions: dict[str, int] = msgspec.field(default_factory=dict)

    def copy(self) -> Totals:
        return msgspec.structs.replace(self, exceptions=dict(self.exceptions))


class Snapshot(msgspec.Struct, kw_only=True):
    """The whole reconciler: watermarks, totals and every remembered payment."""

    watermark_ms: int
    totals: Totals
    states: dict[str, TxState]
    # Latest event time seen on each input; the deadlines run on the lower of the two.
    # (0 in a snapshot written before they were kept: the overall watermark is used.)
    authorizations_ms: int = 0
    settlements_ms: int = 0


def auth_view(a: Authorization) -> AuthView:
    return AuthView(
        approved=a.approved,
        cents=to_cents(a.amount),
        currency=a.currency,
        event_ms=to_ms(a.event_time),
    )


def settlement_view(s: Settlement) -> SettlementView:
    return SettlementView(
        settlement_id=s.settlement_id,
        kind=s.kind,
        cents=to_cents(s.amount),
        currency=s.currency,
        at_ms=to_ms(s.settled_at),
        card_id=s.card_id,
    )


def to_builtins(value: msgspec.Struct) -> Any:
    return msgspec.to_builtins(value)


def state_from_builtins(raw: Any) -> TxState:
    return msgspec.convert(raw, TxState)


def totals_from_builtins(raw: Any) -> Totals:
    return msgspec.convert(raw, Totals)


def snapshot_from_builtins(raw: Any) -> Snapshot:
    return msgspec.convert(raw, Snapshot)
