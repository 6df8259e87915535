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
    original: bytes  # base64 in JSON
    received_at: EventTime


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


# Topic name (settings key) -> the struct its values follow. Grows as topics are added.
TOPIC_SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "transactions": Transaction,
    "decisions": Decision,
    "decisions_shadow": Decision,
    "deadletter": DeadLetter,
    "labels": LabelEvent,
}
