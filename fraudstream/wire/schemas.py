"""Versioned event schemas for every topic, declared once.

These ``msgspec.Struct`` definitions are the single source of truth: the decoder
validates against them and ``config/schemas/*.json`` is generated from them
(``fraudstream schemas``), so a consumer in another language reads exactly what we write.

Card numbers never travel here: ``card_id`` is a token (see ``fraudstream.wire.pan``).
Every message carries ``schema_version``; a version this build does not know is
dead-lettered, not guessed at.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION: Literal[1] = 1

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
Mcc = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}$", description="ISO 18245 merchant category")]
Amount = Annotated[float, msgspec.Meta(ge=0, le=1e9, description="major currency units")]
EventTime = Annotated[
    datetime, msgspec.Meta(tz=True, description="RFC 3339 timestamp with a UTC offset")
]
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]
Score = Annotated[float, msgspec.Meta(ge=0, le=1)]
MaskedPan = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9]{0,6}[*]{3,}[0-9]{0,4}$",
        max_length=19,
        description="a card number with all but at most the first 6 and last 4 digits masked",
    ),
]
Version = Literal[1]

Channel = Literal["pos", "ecom", "moto", "atm", "contactless"]
Outcome = Literal["approve", "review", "decline"]


class Transaction(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A card payment to decide on. Keyed by ``card_id`` on the transactions topic."""

    schema_version: Version
    transaction_id: Id
    event_time: EventTime
    card_id: Id
    terminal_id: Id
    amount: Amount
    currency: Currency
    merchant_id: Id | None = None
    device_id: Id | None = None
    ip: Annotated[str, msgspec.Meta(max_length=45)] | None = None
    country: Country | None = None
    mcc: Mcc | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    channel: Channel | None = None
    # Set at ingress when the producer sent a card number: its masked form (at most the
    # first 6 and last 4 digits); the number itself became ``card_id``'s keyed token.
    card_display: MaskedPan | None = None


class Reason(msgspec.Struct, frozen=True, kw_only=True):
    """Why a decision came out as it did, in a form an analyst can read."""

    code: Annotated[str, msgspec.Meta(max_length=64)]
    text: Annotated[str, msgspec.Meta(max_length=256)]
    layer: Annotated[str, msgspec.Meta(max_length=32)]


class Decision(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The engine's answer for one transaction. Keyed by ``card_id`` like its input."""

    schema_version: Version
    transaction_id: Id
    card_id: Id
    decision: Outcome
    score: Score
    reasons: list[Reason]
    model_version: Annotated[str, msgspec.Meta(max_length=128)]
    layers_run: list[str]
    degraded: bool
    latency_ms: Annotated[float, msgspec.Meta(ge=0)]
    event_time: EventTime
    decided_at: EventTime
    amount: Amount
    currency: Currency
    # True when the hard deadline passed and the configured default action was emitted.
    timeout_default: bool = False


RejectKind = Literal["malformed_json", "schema_violation", "oversize", "unknown_version"]


class DeadLetter(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A message the engine could not use, kept whole so nothing is lost."""

    schema_version: Version
    source_topic: str
    partition: int
    offset: int
    kind: RejectKind
    reason: Annotated[str, msgspec.Meta(max_length=1024)]
    original: bytes  # base64 in JSON; the first ORIGINAL_KEPT_BYTES when larger
    received_at: EventTime
    # A larger input keeps only its head here (a dead letter must fit in a Kafka message):
    # its full size and SHA-256 (hex written with the letters a..p, see
    # fraudstream.wire.pan.letters_digest) say which one it was; the whole message stays
    # on its source topic at (partition, offset) for the topic's retention.
    original_truncated: bool = False
    original_size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    original_sha256: Annotated[str, msgspec.Meta(pattern="^[a-p]{64}$")] | None = None


LabelSource = Literal["chargeback", "investigator"]


class LabelEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Ground truth arriving after the fact: a chargeback or an investigator's verdict.

    It repeats the original transaction's card, terminal, merchant category and event
    time so the feature store can update risk windows without a lookup of its own; a
    later label for the same transaction replaces an earlier one.
    """

    schema_version: Version
    transaction_id: Id
    card_id: Id
    terminal_id: Id
    event_time: EventTime  # of the labelled transaction
    label_time: EventTime  # when the label became known
    is_fraud: bool
    source: LabelSource
    mcc: Mcc | None = None


# --- payment pipeline: authorisation, clearing, reconciliation --------------------------
#
# Co-partitioning: transactions, decisions, authorizations, settlements and
# reconciliation.exceptions are all keyed by ``card_id`` and created with the same
# partition count (``kafka.partitions``), so every message about one payment lands on the
# same partition number of every topic. The reconciler's state, keyed by
# ``transaction_id``, therefore lives in exactly one partition: a payment's authorisation
# and its settlements meet in the same task without a repartition.

ResponseCode = Literal["00", "05", "59", "91"]


class Authorization(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the payment pipeline answered for one decision. Keyed by ``card_id``.

    ``response_code`` is ISO 8583 field 39, from the decision
    (``fraudstream.authorize.mapping``): approve → approved, 00; review → approved, 00,
    ``review`` true (the payment goes through and is queued for an analyst: the
    cardholder is never held up by the engine's uncertainty); decline → not approved,
    59 suspected fraud; decline while ``degraded`` (fallback layers) → 05 do not honour;
    decline emitted as the ``timeout_default`` (deadline passed, fail-closed) → 91 issuer
    unavailable, which terminals may retry. An approve or review emitted as the
    fail-open timeout default stays 00 with ``timeout_default`` set.
    """

    schema_version: Version
    transaction_id: Id
    card_id: Id
    approved: bool
    response_code: ResponseCode
    review: bool
    timeout_default: bool
    amount: Amount
    currency: Currency
    decision: Outcome
    score: Score
    model_version: Annotated[str, msgspec.Meta(max_length=128)]
    event_time: EventTime  # of the transaction
    authorized_at: EventTime


SettlementKind = Literal["capture", "partial_capture", "refund", "tip_adjusted"]


class Settlement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One clearing record from the acquirer. Keyed by ``card_id``.

    ``capture`` settles the authorised amount in full; ``partial_capture`` rows (split
    shipments) sum up to it; ``tip_adjusted`` may exceed it by the tip; ``refund`` returns
    money and references the original ``transaction_id``.
    """

    schema_version: Version
    settlement_id: Id
    transaction_id: Id
    card_id: Id
    amount: Amount
    currency: Currency
    settled_at: EventTime
    kind: SettlementKind


ExceptionKind = Literal[
    "settlement_without_authorization",
    "authorization_not_settled",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_settlement",
    "settled_while_declined",
    "refund_exceeds_capture",
]


class ReconciliationException(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """A discrepancy between what was authorised and what settled. Keyed by ``card_id``.

    ``expected_*`` is the authorisation's side (absent when there is none), ``actual_*``
    the settlement's (absent for ``authorization_not_settled``). ``detected_at`` is the
    reconciler's event-time watermark when it was found, never wall time.
    """

    schema_version: Version
    kind: ExceptionKind
    transaction_id: Id
    card_id: Id
    settlement_id: Id | None = None
    expected_amount: Amount | None = None
    expected_currency: Currency | None = None
    actual_amount: Amount | None = None
    actual_currency: Currency | None = None
    detail: Annotated[str, msgspec.Meta(max_length=512)]
    detected_at: EventTime


# Topic name (settings key) -> the struct its values follow. Grows as topics are added.
TOPIC_SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "transactions": Transaction,
    "decisions": Decision,
    "decisions_shadow": Decision,
    "deadletter": DeadLetter,
    "labels": LabelEvent,
    "authorizations": Authorization,
    "settlements": Settlement,
    "reconciliation_exceptions": ReconciliationException,
}
