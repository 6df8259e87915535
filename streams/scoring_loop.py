"""The scoring agent's loop: micro-batches in, each decided and handed to the producer
while the previous one waits for the broker, inputs acknowledged once every output is
(at-least-once), or released when the loop fails. Faust's stream and the step that
decides stand behind small interfaces, so the loop is tested without a broker
(``tests/streams/test_agents.py``); the benchmarks' no-op worker runs the same loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import faust

from fraudstream.errors import OutputRejected
from fraudstream.wire import Decision
from streams.batching import EventBatcher
from streams.scoring import BatchOutcome, RawMessage, StreamHooks, raw_messages

log = logging.getLogger(__name__)


@runtime_checkable
class ScoringObserver(Protocol):
    """What the scoring agent reports besides :class:`streams.scoring.StreamHooks`;
    ``fraudstream.metrics.PrometheusStreamHooks`` implements both."""

    def decisions_produced(self, decisions: Sequence[Decision], produced_at: datetime) -> None: ...

    def deduplicated(self, hits: int, remembered: int) -> None: ...

    def consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None: ...

    def commit_guard(self, rewinds: int, uncounted_acks: int) -> None: ...

    def ingress_rewrites(self, per_field: Mapping[str, int]) -> None: ...


@dataclass
class SentBatch:
    """A batch handed to the producer: what it decided, and the broker
    acknowledgements (futures, one per record batch: :func:`send_records`) still to
    come for its outputs."""

    outcome: BatchOutcome
    decisions: list[Decision]
    pending: list[Any]


def scoring_agent(
    app: faust.App,
    step: BatchSender,
    hooks: StreamHooks,
    *,
    max_batch: int,
    within_s: float,
    observer: ScoringObserver | None = None,
) -> Callable[[Any], Awaitable[None]]:
    """The agent body Faust runs over the transactions stream: :func:`score_stream` over
    ``stream.noack()`` (acknowledged by the loop, once delivered), batched by
    :class:`EventBatcher`; what a failed loop held is released through the app's
    consumer (:meth:`streams.commit_guard.CommitGuardConsumer.release`)."""

    def release(events: Sequence[Any]) -> None:
        consumer: Any = app.consumer  # streams.app.EngineApp's: a CommitGuardConsumer
        for event in events:
            consumer.release(event.message)

    async def agent(stream: Any) -> None:
        manual = stream.noack()
        batches = EventBatcher(manual.events(), max_batch, within_s)
        await score_stream(manual, step, batches, hooks, observer, release=release)

    return agent


class BatchSender(Protocol):
    """What :func:`score_stream` drives: one batch in, its outputs handed to the
    producer (:class:`ScoringStep`; the benchmarks' no-op worker forwards the bytes)."""

    async def send(self, messages: Sequence[RawMessage]) -> SentBatch: ...


async def score_stream(
    stream: Any,
    step: BatchSender,
    batches: EventBatcher[Any],
    hooks: StreamHooks,
    observer: ScoringObserver | None = None,
    *,
    stuck_warning_s: float = 30.0,
    release: Callable[[Sequence[Any]], None] | None = None,
) -> None:
    """The scoring agent's loop over ``stream`` (Faust's, with acknowledgements left to
    the caller: ``noack()``; ``batches`` reads its ``events()``): each batch is decided
    and handed to the producer while the previous one waits for the broker; a batch's
    inputs are acknowledged (``stream.ack``) only once every output of it is
    acknowledged by the broker (at-least-once).

    One batch is in delivery at a time, so inputs are acknowledged in order. A failed
    delivery is logged at once and ends the loop (Faust restarts the agent); neither its
    inputs nor any later ones are acknowledged, so they are read again and get their
    remembered decisions (``streams.dedupe``), never a second scoring. Every event
    the loop holds unacknowledged when it ends on an error (in delivery, being decided,
    buffered) is handed to ``release``: done for Faust's bookkeeping, not committed
    (:meth:`streams.commit_guard.CommitGuardConsumer.release`). A delivery still
    waiting after ``stuck_warning_s`` is logged, again every ``stuck_warning_s``: every
    decision after it waits too."""
    delivering: asyncio.Future[None] | None = None
    in_delivery: Sequence[Any] = ()
    events: Sequence[Any] = ()

    async def deliver(events: Sequence[Any], sent: SentBatch, started: float) -> None:
        try:
            await acknowledged(sent.pending, stuck_warning_s)
        except Exception:
            log.exception("a batch's outputs were not delivered; its inputs stay unacknowledged")
            raise
        for event in events:
            await stream.ack(event)
        hooks.batch_processed(sent.outcome, len(events), time.perf_counter() - started)
        if observer is not None:
            observer.decisions_produced(sent.decisions, datetime.now(UTC))

    async with batches:
        try:
            while True:
                try:
                    events = await batches.next()
                except StopAsyncIteration:
                    events = ()
                    break
                started = time.perf_counter()
                sent = await step.send(raw_messages(events))
                if delivering is not None:
                    await delivering
                delivering = asyncio.ensure_future(deliver(events, sent, started))
                in_delivery, events = events, ()
            if delivering is not None:
                await delivering
        except BaseException:
            if release is not None:  # what was already acknowledged is left as it is
                release([*in_delivery, *events, *batches.take_all()])
            raise
        finally:
            if delivering is not None and not delivering.done():
                delivering.cancel()


async def acknowledged(pending: Sequence[Any], warn_every_s: float) -> None:
    """Until every future of ``pending`` (one per record batch: :func:`send_records`) is
    done, raising the first failure; a warning every ``warn_every_s`` while some are
    not. The producer waits for a broker for as long as its request timeout, and a
    stream that stopped deciding says why."""
    waiting = {asyncio.ensure_future(p) for p in pending}
    began = time.monotonic()
    while waiting:
        done, waiting = await asyncio.wait(
            waiting, timeout=warn_every_s, return_when=asyncio.FIRST_EXCEPTION
        )
        for future in done:
            future.result()
        if waiting:
            log.warning(
                "%d of %d record batches of outputs not acknowledged by the broker after %.0f s; "
                "its inputs, and every batch after it, wait",
                len(waiting),
                len(pending),
                time.monotonic() - began,
            )


# A record for :func:`send_records`: key, value (None: a tombstone), partition (None:
# the producer's partitioner chooses by key, as ``Producer.send`` would).
KafkaRecord = tuple[bytes | None, bytes | None, int | None]


async def send_all(topic: Any, outgoing: Sequence[Any]) -> list[Any]:
    """Produce each message (``.key``, ``.value`` bytes, already serialised) to the Faust
    ``topic``, partitioned by key; the broker-acknowledgement futures come back
    (:func:`send_records`)."""
    records = [(o.key, o.value, None) for o in outgoing]
    return await send_records(topic.app.producer, topic.get_topic_name(), records)


async def send_records(producer: Any, topic: str, records: Sequence[KafkaRecord]) -> list[Any]:
    """Hand ``records`` to the Kafka client under Faust's ``producer`` as record batches
    built here, one per partition (more when one fills ``producer_max_batch_size``), in
    order within each partition; the acknowledgement future of each batch comes back.

    Why not ``Producer.send`` per message: it wraps every message in a future, callbacks
    and an event-loop lookup, which with two outputs per decision (the decision and its
    changelog entry) was a fifth of the worker's event loop at full load. The guarantee
    is the same: a batch's future fails if any of its records is not acknowledged, and
    the caller awaits them all before acknowledging the inputs."""
    if not records:
        return []
    kafka = producer._ensure_producer()  # Faust's aiokafka producer (started with Faust)
    partitions = sorted(await kafka.partitions_for(topic))
    choose = producer.partitioner  # what Faust gave aiokafka: the same choice as send()
    by_partition: dict[int, list[KafkaRecord]] = {}
    for record in records:
        key, _, partition = record
        if partition is None:
            partition = choose(key, partitions, partitions)
        by_partition.setdefault(partition, []).append(record)
    acks = []
    for partition, part in by_partition.items():
        batch, held = kafka.create_batch(), 0
        for key, value, _ in part:
            while batch.append(key=key, value=value, timestamp=None) is None:  # full
                if held == 0:  # aiokafka takes any first record; never drop one quietly
                    raise OutputRejected(topic, partition, len(key or b"") + len(value or b""))
                acks.append(await kafka.send_batch(batch, topic, partition=partition))
                batch, held = kafka.create_batch(), 0
            held += 1
        acks.append(await kafka.send_batch(batch, topic, partition=partition))
    return acks
