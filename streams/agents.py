"""The Faust agents: decode raw bytes in micro-batches, call the pure core, produce.

One agent instance per worker process (``concurrency=1``): with more, Faust can commit
past in-flight messages and lose them. Offsets are acknowledged only after every
decision and dead letter of the batch has been acknowledged by the broker, so a crash
redelivers (at-least-once); decisions are idempotent by transaction id downstream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import faust

from fraudstream.wire import transaction_decoder
from streams.app import EngineTopics
from streams.scoring import DecisionPipeline, RawMessage, StreamHooks, process_batch


def register_scoring_agent(
    app: faust.App,
    topics: EngineTopics,
    pipeline: DecisionPipeline,
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
            messages = [
                RawMessage(
                    key=e.message.key,
                    value=e.message.value,
                    topic=e.message.topic,
                    partition=e.message.partition,
                    offset=e.message.offset,
                )
                for e in events
            ]
            outcome = process_batch(messages, decoder, pipeline)
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
