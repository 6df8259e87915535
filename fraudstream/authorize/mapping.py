"""Decision → authorisation: the response a payment team gives for each engine answer.

=====================================  ========  ========================  ======
decision                               approved  response code (ISO 8583)  review
=====================================  ========  ========================  ======
approve                                yes       00 approved               no
review                                 yes       00 approved               yes
decline                                no        59 suspected fraud        no
decline, degraded (fallback layers)    no        05 do not honour          no
decline, timeout_default (fail-closed) no        91 issuer unavailable     no
=====================================  ========  ========================  ======

*Review* never holds up the cardholder: the payment is approved now and queued for an
analyst, who can block the card or start a recall afterwards; declining every review
would turn the engine's uncertainty into lost sales. A decline made while layers were
down says only "do not honour" (the engine is less sure, so the merchant is not told
"fraud"); one emitted because the deadline passed says "issuer unavailable", which
terminals treat as retryable. An approve or review emitted as the fail-open timeout
default stays ``00`` and carries ``timeout_default`` so the pipeline can count them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple, cast

from fraudstream.wire.schemas import SCHEMA_VERSION, Authorization, Outcome, ResponseCode


class DecisionView(NamedTuple):
    """The fields of a schema-valid decision document that authorisation uses."""

    transaction_id: str
    card_id: str
    decision: Outcome
    score: float
    model_version: str
    degraded: bool
    timeout_default: bool
    amount: float
    currency: str
    event_time: datetime


class MissingOffsetError(ValueError):
    """A timestamp without a UTC offset: event times are never guessed."""

    def __init__(self, field: str, value: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field} {value!r} has no UTC offset")


def _time(doc: Mapping[str, Any], field: str) -> datetime:
    value = str(doc[field])
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise MissingOffsetError(field, value)
    return moment


def decision_view(doc: Mapping[str, Any]) -> DecisionView:
    """Read a decision document that already passed the published JSON Schema."""
    return DecisionView(
        transaction_id=str(doc["transaction_id"]),
        card_id=str(doc["card_id"]),
        decision=cast(Outcome, doc["decision"]),
        score=float(doc["score"]),
        model_version=str(doc["model_version"]),
        degraded=bool(doc["degraded"]),
        timeout_default=bool(doc.get("timeout_default", False)),
        amount=float(doc["amount"]),
        currency=str(doc["currency"]),
        event_time=_time(doc, "event_time"),
    )


def response_code(decision: Outcome, *, degraded: bool, timeout_default: bool) -> ResponseCode:
    if decision != "decline":
        return "00"
    if timeout_default:
        return "91"
    if degraded:
        return "05"
    return "59"


def authorization_for(view: DecisionView, authorized_at: datetime) -> Authorization:
    return Authorization(
        schema_version=SCHEMA_VERSION,
        transaction_id=view.transaction_id,
        card_id=view.card_id,
        approved=view.decision != "decline",
        response_code=response_code(
            view.decision, degraded=view.degraded, timeout_default=view.timeout_default
        ),
        review=view.decision == "review",
        timeout_default=view.timeout_default,
        amount=view.amount,
        currency=view.currency,
        decision=view.decision,
        score=view.score,
        model_version=view.model_version,
        event_time=view.event_time,
        authorized_at=authorized_at,
    )
