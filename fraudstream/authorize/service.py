"""``fraudstream authorize``: the payment pipeline's side, on a plain aiokafka client.

Consumes decisions, produces authorisations keyed by card id (co-partitioned with the
decisions, settlements and the reconciler's input) and dead letters. At-least-once: the
offsets of a batch are committed only after the broker acknowledged every message the
batch produced, so a crash redelivers rather than loses; repeats are absorbed by the
bounded in-memory dedupe and, durably, by the reconciler (see ``batch``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fraudstream.authorize.batch import AuthorizeOutcome, Incoming, RecentIds, authorize_batch
from fraudstream.authorize.config import AuthorizeConfig
from fraudstream.authorize.validate import SchemaValidator
from fraudstream.settings import KafkaSettings

log = logging.getLogger(__name__)


class AuthorizeHooks(Protocol):
    """Where the service reports each batch (metrics live elsewhere)."""

    def batch_done(self, outcome: AuthorizeOutcome, size: int, seconds: float) -> None: ...


class NoAuthorizeHooks:
    def batch_done(self, outcome: AuthorizeOutcome, size: int, seconds: float) -> None:
        return None


def _wall_clock() -> datetime:
    return datetime.now(UTC)


async def run_authorize(
    kafka: KafkaSettings,
    config: AuthorizeConfig,
    *,
    stop: asyncio.Event | None = None,
    hooks: AuthorizeHooks | None = None,
    clock: Callable[[], datetime] = _wall_clock,
) -> None:
    """Run until ``stop`` is set (or the task is cancelled)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from streams.kafka_config import aiokafka_kwargs

    stop = stop or asyncio.Event()
    hooks = hooks or NoAuthorizeHooks()
    topics = kafka.topics
    validator = SchemaValidator.from_file(config.decision_schema, max_bytes=kafka.max_message_bytes)
    recent = RecentIds(config.dedupe_size)
    common = aiokafka_kwargs(kafka)
    consumer = AIOKafkaConsumer(
        topics.decisions,
        group_id=config.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **common,
    )
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **common)
    await consumer.start()
    try:
        await producer.start()
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=config.poll_timeout_ms, max_records=config.max_batch
                )
                if not fetched:
                    continue
                started = time.perf_counter()
                messages = [
                    Incoming(r.key, r.value, r.topic, r.partition, r.offset)
                    for records in fetched.values()
                    for r in records
                ]
                outcome = authorize_batch(messages, validator, recent, clock())
                pending: list[Any] = [
                    await producer.send(topics.deadletter, key=o.key, value=o.value)
                    for o in outcome.deadletters
                ]
                pending += [
                    await producer.send(topics.authorizations, key=o.key, value=o.value)
                    for o in outcome.authorizations
                ]
                await asyncio.gather(*pending)  # acknowledged by the broker, or raise
                recent.update(outcome.transaction_ids)
                offsets = {
                    TopicPartition(tp.topic, tp.partition): records[-1].offset + 1
                    for tp, records in fetched.items()
                    if records
                }
                await consumer.commit(offsets)
                hooks.batch_done(outcome, len(messages), time.perf_counter() - started)
        finally:
            await producer.stop()
    finally:
        await consumer.stop()
