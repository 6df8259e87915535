"""The pure core of the authorization service: raw decisions in, messages to produce out.

Idempotent by transaction id within what it remembers: a decision seen again (a
redelivery after a crash or a rebalance, or the engine deciding twice) yields no second
authorisation. The memory is bounded (:class:`RecentIds`), so this only drops the
repeats that arrive close together; the durable guarantee is downstream, where the
reconciler keeps every payment for its retention period and treats a repeated
authorisation of the same transaction id as a redelivery.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fraudstream.authorize.mapping import authorization_for, decision_view
from fraudstream.authorize.validate import SchemaValidator
from fraudstream.wire.decode import Rejected, dead_letter_record, encode
from fraudstream.wire.schemas import RejectKind


@dataclass(frozen=True, slots=True)
class Incoming:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class AuthorizeOutcome:
    authorizations: list[Outgoing] = field(default_factory=list)
    deadletters: list[Outgoing] = field(default_factory=list)
    # Transaction ids of ``authorizations``: remembered once the broker acknowledged them.
    transaction_ids: list[str] = field(default_factory=list)
    duplicates: int = 0
    rejected: Counter[RejectKind] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)  # by response code


class RecentIds:
    """The last ``size`` transaction ids authorised, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def update(self, transaction_ids: Iterable[str]) -> None:
        for tx in transaction_ids:
            self._ids[tx] = None
            self._ids.move_to_end(tx)
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)


def dead_letter(message: Incoming, kind: RejectKind, reason: str, now: datetime) -> Outgoing:
    return Outgoing(*dead_letter_record(message, kind, reason, now))


def authorize_batch(
    messages: Sequence[Incoming], validator: SchemaValidator, recent: RecentIds, now: datetime
) -> AuthorizeOutcome:
    """Validate, drop repeats, map each decision to its authorisation (keyed by card)."""
    out = AuthorizeOutcome()
    in_batch: set[str] = set()
    for index, message in enumerate(messages):
        checked = validator.validate(index, message.value)
        if isinstance(checked, Rejected):
            out.deadletters.append(dead_letter(message, checked.kind, checked.reason, now))
            out.rejected[checked.kind] += 1
            continue
        try:
            view = decision_view(checked)
        except (KeyError, TypeError, ValueError) as exc:  # schema-valid yet unusable
            out.deadletters.append(dead_letter(message, "schema_violation", str(exc), now))
            out.rejected["schema_violation"] += 1
            continue
        if view.transaction_id in recent or view.transaction_id in in_batch:
            out.duplicates += 1
            continue
        in_batch.add(view.transaction_id)
        authorization = authorization_for(view, now)
        out.authorizations.append(Outgoing(view.card_id.encode(), encode(authorization)))
        out.transaction_ids.append(view.transaction_id)
        out.responses[authorization.response_code] += 1
    return out
