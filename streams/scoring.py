"""The pure heart of the scoring agent: raw messages in, messages to produce out.

The Faust agent (``streams/agents.py``) only adapts events to :class:`RawMessage`, calls
:func:`process_batch` and produces what it returns, so everything here is testable
without a broker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from fraudstream.wire import BatchDecoder, DeadLetter, Decision, Transaction, encode
from fraudstream.wire.schemas import SCHEMA_VERSION, RejectKind


@dataclass(frozen=True, slots=True)
class RawMessage:
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
class BatchOutcome:
    decisions: list[Outgoing] = field(default_factory=list)
    deadletters: list[Outgoing] = field(default_factory=list)
    rejected: Counter[RejectKind] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


class DecisionPipeline(Protocol):
    """Turns decoded transactions into one decision each, in order."""

    def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]: ...


class StreamHooks(Protocol):
    """Where the agent reports what happened; the Prometheus implementation lives in
    ``fraudstream.metrics`` so that scoring code never touches prometheus_client."""

    def batch_processed(self, outcome: BatchOutcome, size: int, seconds: float) -> None: ...


class NoHooks:
    def batch_processed(self, outcome: BatchOutcome, size: int, seconds: float) -> None:
        return None


def process_batch(
    messages: Sequence[RawMessage],
    decoder: BatchDecoder[Transaction],
    pipeline: DecisionPipeline,
    now: datetime | None = None,
) -> BatchOutcome:
    now = now or datetime.now(UTC)
    outcome = BatchOutcome()
    decoded = decoder.decode([m.value for m in messages])
    for rejected in decoded.rejected:
        source = messages[rejected.index]
        letter = DeadLetter(
            schema_version=SCHEMA_VERSION,
            source_topic=source.topic,
            partition=source.partition,
            offset=source.offset,
            kind=rejected.kind,
            reason=rejected.reason[:1024],
            original=rejected.raw,
            received_at=now,
        )
        outcome.deadletters.append(Outgoing(source.key, encode(letter)))
        outcome.rejected[rejected.kind] += 1
    if decoded.items:
        decisions = pipeline.decide(decoded.items, now)
        if len(decisions) != len(decoded.items):
            raise AssertionError("a pipeline must return exactly one decision per transaction")
        for decision in decisions:
            outcome.decisions.append(Outgoing(decision.card_id.encode(), encode(decision)))
            outcome.outcomes[decision.decision] += 1
    return outcome


class PlaceholderPipeline:
    """Approves everything with score 0 and says so (``model_version="placeholder"``,
    no layers run, degraded). Used only until a trained engine is registered."""

    model_version = "placeholder"

    def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        return [
            Decision(
                schema_version=SCHEMA_VERSION,
                transaction_id=t.transaction_id,
                card_id=t.card_id,
                decision="approve",
                score=0.0,
                reasons=[],
                model_version=self.model_version,
                layers_run=[],
                degraded=True,
                latency_ms=max(0.0, (now - t.event_time).total_seconds() * 1000.0),
                event_time=t.event_time,
                decided_at=now,
                amount=t.amount,
                currency=t.currency,
            )
            for t in transactions
        ]
