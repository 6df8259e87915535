"""Handing raw outputs to the Kafka producer and waiting for the broker's
acknowledgements: the two producer-facing steps of the scoring loop
(:func:`streams.agents.score_stream`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


async def acknowledged(pending: Sequence[Any], warn_every_s: float) -> None:
    """Until every future of ``pending`` is done (raising the first failure); a warning
    every ``warn_every_s`` while some are not. The producer waits for a broker for as
    long as its request timeout, and a stream that stopped deciding says why."""
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
                "%d of %d outputs of a batch not acknowledged by the broker after %.0f s; "
                "its inputs, and every batch after it, wait",
                len(waiting),
                len(pending),
                time.monotonic() - began,
            )


async def send_all(topic: Any, outgoing: Sequence[Any]) -> list[Any]:
    """Hand each message (``.key``, ``.value`` bytes) straight to the Kafka producer;
    the broker-acknowledgement futures come back. Faust's ``Topic.send`` wraps every
    message in futures and callbacks (tens of microseconds each) that raw bytes, already
    keyed and serialised, do not need; the delivery guarantee is the same, since the
    caller awaits every acknowledgement before the inputs are acknowledged."""
    if not outgoing:
        return []
    producer = topic.app.producer
    name = topic.get_topic_name()
    return [await producer.send(name, o.key, o.value, None, None, None) for o in outgoing]
