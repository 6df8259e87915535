"""The pure heart of the scoring agent: raw messages in, messages to produce out.

The Faust agents (``streams/agents.py``) only adapt events to :class:`RawMessage`, call
:func:`process_batch_within` (transactions: decode, decide in a worker thread under the
deadline, encode) or :func:`decode_labels` (the labels topic), and produce what they
return, so everything here is testable without a broker.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fraudstream.wire import BatchDecoder, Decision, LabelEvent, Transaction, encode
from fraudstream.wire.decode import Rejected, dead_letter_record
from fraudstream.wire.schemas import RejectKind
from models.decisions import decision_record


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
    # Decisions made without every layer / feature, and configured defaults emitted
    # because the deadline passed.
    degraded: int = 0
    timeout_defaults: int = 0


@dataclass(slots=True)
class LabelOutcome:
    """A decoded batch of the labels topic: the labels to apply and the dead letters."""

    labels: list[LabelEvent] = field(default_factory=list)
    deadletters: list[Outgoing] = field(default_factory=list)
    rejected: Counter[RejectKind] = field(default_factory=Counter)
    applied: int = 0  # labels that changed the feature state (a repeat changes nothing)


class DecisionPipeline(Protocol):
    """Turns decoded transactions into one decision each, in order."""

    def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]: ...


# (transactions, now, timed_out) -> the configured default decisions: ``timed_out`` is
# False when the pipeline raised instead.
Fallback = Callable[[Sequence[Transaction], datetime, bool], list[Decision]]


class StreamHooks(Protocol):
    """Where the agents report what happened; the Prometheus implementation lives in
    ``fraudstream.metrics`` so that scoring code never touches prometheus_client."""

    def batch_processed(self, outcome: BatchOutcome, size: int, seconds: float) -> None: ...

    def labels_processed(self, outcome: LabelOutcome, size: int, seconds: float) -> None: ...

    def pipeline_failed(self, error: BaseException) -> None: ...


class NoHooks:
    def batch_processed(self, outcome: BatchOutcome, size: int, seconds: float) -> None:
        return None

    def labels_processed(self, outcome: LabelOutcome, size: int, seconds: float) -> None:
        return None

    def pipeline_failed(self, error: BaseException) -> None:
        return None


def _dead_letters(
    messages: Sequence[RawMessage],
    rejected: Sequence[Rejected],
    now: datetime,
    letters: list[Outgoing],
    counts: Counter[RejectKind],
) -> None:
    for item in rejected:
        # item.raw: the bytes after the card-number ingress, not as received
        key, letter = dead_letter_record(
            messages[item.index], item.kind, item.reason, now, item.raw
        )
        letters.append(Outgoing(key, letter))
        counts[item.kind] += 1


def decode_batch(
    messages: Sequence[RawMessage], decoder: BatchDecoder[Transaction], now: datetime
) -> tuple[BatchOutcome, list[Transaction]]:
    """The dead letters of a batch (in the outcome) and its valid transactions, in order."""
    outcome = BatchOutcome()
    decoded = decoder.decode([m.value for m in messages])
    _dead_letters(messages, decoded.rejected, now, outcome.deadletters, outcome.rejected)
    return outcome, decoded.items


def record_decisions(
    outcome: BatchOutcome, transactions: Sequence[Transaction], decisions: Sequence[Decision]
) -> None:
    if len(decisions) != len(transactions):
        raise AssertionError("a pipeline must return exactly one decision per transaction")
    for decision in decisions:
        outcome.decisions.append(Outgoing(decision.card_id.encode(), encode(decision)))
        outcome.outcomes[decision.decision] += 1
        outcome.degraded += decision.degraded
        outcome.timeout_defaults += decision.timeout_default


def process_batch(
    messages: Sequence[RawMessage],
    decoder: BatchDecoder[Transaction],
    pipeline: DecisionPipeline,
    now: datetime | None = None,
) -> BatchOutcome:
    """Decode, decide (on this thread, without a deadline of its own), encode."""
    now = now or datetime.now(UTC)
    outcome, transactions = decode_batch(messages, decoder, now)
    if transactions:
        record_decisions(outcome, transactions, pipeline.decide(transactions, now))
    return outcome


class BatchDecider(Protocol):
    """What the scoring agent decides with: :class:`DeadlineDecider`, or
    :class:`streams.routing.RoutedDecider` (champion, challenger, canary)."""

    async def decide(
        self, transactions: Sequence[Transaction], now: datetime
    ) -> list[Decision]: ...

    def take_shadow(self) -> list[Outgoing]:
        """The last batch's shadow decisions, for the shadow topic (taken once)."""
        ...


# How much of a batch's time budget it waits for the previous batch's engine call
# when that one ran past its own deadline.
STRAGGLER_WAIT_SHARE = 0.5


async def wait_for_straggler(late: asyncio.Future[Any], timeout_s: float) -> bool:
    """Wait for ``late`` (the previous batch's engine call, past its deadline) at most
    half of this batch's budget; whether it is still running.

    Usually it finishes within that, and batches go through the engine one at a time.
    One that is still running is stuck in a layer that hangs: this batch then runs
    beside it rather than miss its own deadline too. That is safe because a call past
    its deadline only finishes its current layer and then returns defaults that
    nobody reads, and the hung layer's breaker counts the call still in flight as a
    failure at its next admission check, so it opens and later batches skip the layer
    (degraded decisions with the fallback thresholds) instead of hanging with it."""
    await asyncio.wait({late}, timeout=timeout_s * STRAGGLER_WAIT_SHARE)
    return not late.done()


def raw_messages(events: Sequence[Any]) -> list[RawMessage]:
    """The Kafka messages of Faust events, as the pure core takes them."""
    return [
        RawMessage(
            key=e.message.key,
            value=e.message.value,
            topic=e.message.topic,
            partition=e.message.partition,
            offset=e.message.offset,
        )
        for e in events
    ]


class DeadlineDecider:
    """Runs a blocking pipeline in a worker thread, under a deadline.

    A CPU-bound layer cannot be interrupted, so when ``timeout_s`` passes the caller gets
    ``fallback(..., timed_out=True)`` at once and the late thread is left to finish (the
    engine's own :class:`models.decide.Deadline` makes it stop early); the next call
    waits for it first, up to half its own budget (:func:`wait_for_straggler`).
    A pipeline that raises gets ``fallback(..., timed_out=False)`` and the error is
    reported through ``on_error``: input must never stop the stream.
    """

    def __init__(
        self,
        pipeline: DecisionPipeline,
        *,
        timeout_s: float,
        fallback: Fallback,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.timeout_s = timeout_s
        self._fallback = fallback
        self._on_error = on_error
        self._late: asyncio.Future[list[Decision]] | None = None

    async def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.timeout_s
        if self._late is not None and not await wait_for_straggler(self._late, self.timeout_s):
            self._late = None
        remaining = give_up_at - loop.time()
        if remaining <= 0:
            return self._fallback(transactions, now, True)
        task = asyncio.ensure_future(asyncio.to_thread(self.pipeline.decide, transactions, now))
        try:
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except TimeoutError:
            self._late = task
            task.add_done_callback(self._finished_late)
            return self._fallback(transactions, now, True)
        except Exception as exc:  # a bug must not stop the stream
            if self._on_error is not None:
                self._on_error(exc)
            return self._fallback(transactions, now, False)

    def _finished_late(self, task: asyncio.Future[list[Decision]]) -> None:
        if not task.cancelled() and task.exception() is not None and self._on_error is not None:
            self._on_error(task.exception())  # type: ignore[arg-type]

    def take_shadow(self) -> list[Outgoing]:
        return []  # one engine: nothing in shadow


async def process_batch_within(
    messages: Sequence[RawMessage],
    decoder: BatchDecoder[Transaction],
    decider: BatchDecider,
    now: datetime | None = None,
) -> BatchOutcome:
    """:func:`process_batch` with the decision made by ``decider`` (thread + deadline)."""
    now = now or datetime.now(UTC)
    outcome, transactions = decode_batch(messages, decoder, now)
    if transactions:
        record_decisions(outcome, transactions, await decider.decide(transactions, now))
    return outcome


def decode_labels(
    messages: Sequence[RawMessage], decoder: BatchDecoder[LabelEvent], now: datetime | None = None
) -> LabelOutcome:
    """The labels of a batch of the labels topic, and dead letters for the bad messages."""
    now = now or datetime.now(UTC)
    outcome = LabelOutcome()
    decoded = decoder.decode([m.value for m in messages])
    _dead_letters(messages, decoded.rejected, now, outcome.deadletters, outcome.rejected)
    outcome.labels = list(decoded.items)
    return outcome


class PlaceholderPipeline:
    """Approves everything with score 0 and says so (``model_version="placeholder"``,
    no layers run, degraded). Used only until a trained engine is registered."""

    model_version = "placeholder"

    def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        return [
            decision_record(
                t,
                "approve",
                0.0,
                [],
                self.model_version,
                layers_run=(),
                degraded=True,
                decided_at=now,
            )
            for t in transactions
        ]
