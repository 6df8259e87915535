"""The Faust agents: decode raw bytes in micro-batches, call the pure core, produce.

One agent instance per worker process (``concurrency=1``): with more, Faust can commit
past in-flight messages and lose them. Offsets are acknowledged only after every
decision and dead letter of the batch has been acknowledged by the broker, so a crash
redelivers (at-least-once); decisions are idempotent by transaction id downstream.

The scoring agent decides in a worker thread under ``scoring.deadline_ms``
(:class:`streams.scoring.DeadlineDecider`); past it the configured default is emitted.
The labels agent applies chargebacks and verdicts to the feature store; while the store
is down it retries the same batch (its offsets are not acknowledged meanwhile), since a
lost label would silently weaken the risk features.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import faust

from fraudstream.errors import FeatureStoreError
from fraudstream.wire import BatchDecoder, LabelEvent, transaction_decoder
from streams.app import EngineTopics
from streams.scoring import (
    DeadlineDecider,
    RawMessage,
    StreamHooks,
    decode_labels,
    process_batch_within,
)

log = logging.getLogger(__name__)

ApplyLabels = Callable[[Sequence[LabelEvent]], int]


def _raw(events: Sequence[Any]) -> list[RawMessage]:
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


def register_scoring_agent(
    app: faust.App,
    topics: EngineTopics,
    decider: DeadlineDecider,
    hooks: StreamHooks,
    *,
    max_batch: int,
    batch_window_s: float,
    max_message_bytes: int,
) -> Any:
    decoder = transaction_decoder(max_message_bytes)

    async def score(stream: Any) -> None:
        async for events in stream.take_events(max_batch, within=batch_window_s):
            started = time.perf_counter()
            messages = _raw(events)
            outcome = await process_batch_within(messages, decoder, decider)
            pending = [
                await topics.deadletter.send(key=out.key, value=out.value)
                for out in outcome.deadletters
            ]
            pending += [
                await topics.decisions.send(key=out.key, value=out.value)
                for out in outcome.decisions
            ]
            # Wait for the broker's acknowledgement of every output before the loop
            # moves on and take_events acks (and later commits) the inputs.
            await asyncio.gather(*pending)
            hooks.batch_processed(outcome, len(messages), time.perf_counter() - started)

    return app.agent(topics.transactions, name="score", concurrency=1)(score)


def register_labels_agent(
    app: faust.App,
    topics: EngineTopics,
    apply_labels: ApplyLabels,
    hooks: StreamHooks,
    *,
    max_batch: int,
    batch_window_s: float,
    max_message_bytes: int,
    retry_s: float = 1.0,
) -> Any:
    decoder = BatchDecoder(LabelEvent, max_bytes=max_message_bytes)

    async def apply(stream: Any) -> None:
        async for events in stream.take_events(max_batch, within=batch_window_s):
            started = time.perf_counter()
            messages = _raw(events)
            outcome = decode_labels(messages, decoder)
            pending = [
                await topics.deadletter.send(key=out.key, value=out.value)
                for out in outcome.deadletters
            ]
            if outcome.labels:
                outcome.applied = await _apply_until_done(apply_labels, outcome.labels, retry_s)
            await asyncio.gather(*pending)
            hooks.labels_processed(outcome, len(messages), time.perf_counter() - started)

    return app.agent(topics.labels, name="labels", concurrency=1)(apply)


async def _apply_until_done(
    apply_labels: ApplyLabels, labels: Sequence[LabelEvent], retry_s: float
) -> int:
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(apply_labels, labels)
        except FeatureStoreError as exc:
            attempt += 1
            log.warning("labels not applied (attempt %d), retrying: %s", attempt, exc)
            await asyncio.sleep(min(retry_s * attempt, 30.0))
