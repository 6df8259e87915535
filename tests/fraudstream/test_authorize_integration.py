"""``run_authorize`` on the real broker: decisions in, one authorisation per transaction
out (keyed by card), bad decisions dead-lettered, offsets committed after the produce."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from fraudstream.authorize import AuthorizeConfig, AuthorizeOutcome
from fraudstream.authorize.service import run_authorize
from streams.topics import ensure_topics
from tests.fraudstream.test_authorize import decision
from tests.streams.harness import consume_until, produce

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[AuthorizeOutcome] = []

    def batch_done(self, outcome: AuthorizeOutcome, size: int, seconds: float) -> None:
        self.outcomes.append(outcome)


def decision_message(i: int) -> tuple[bytes, bytes]:
    outcome = ("approve", "review", "decline")[i % 3]
    doc = decision(transaction_id=f"tx-{i}", card_id=f"card-{i % 7}", decision=outcome)
    return doc["card_id"].encode(), json.dumps(doc).encode()


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
        return sum(offset or 0 for offset in offsets)
    finally:
        await consumer.stop()


async def test_authorize_service_end_to_end(make_settings: Any) -> None:
    settings = make_settings()
    kafka, topics = settings.kafka, settings.kafka.topics
    await ensure_topics(kafka)
    bootstrap = ",".join(kafka.bootstrap_servers)
    messages = [decision_message(i) for i in range(30)]
    messages.append(decision_message(4))  # the engine's decision for tx-4, delivered twice
    messages += [(b"card-x", b"{nope"), (b"card-y", json.dumps(decision(score=7)).encode())]
    await produce(bootstrap, topics.decisions, messages)

    config = AuthorizeConfig(group_id=f"authorize-{settings.worker.app_id}", poll_timeout_ms=100)
    stop, hooks = asyncio.Event(), Recorder()
    task = asyncio.create_task(run_authorize(kafka, config, stop=stop, hooks=hooks))
    try:
        received = await consume_until(
            bootstrap,
            [topics.authorizations, topics.deadletter],
            lambda r: len(r[topics.authorizations]) >= 30 and len(r[topics.deadletter]) >= 2,
            timeout=90,
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    auths = received[topics.authorizations]
    assert sorted(a["transaction_id"] for a in auths) == sorted(f"tx-{i}" for i in range(30))
    by_id = {a["transaction_id"]: a for a in auths}
    assert (by_id["tx-0"]["response_code"], by_id["tx-0"]["review"]) == ("00", False)
    assert (by_id["tx-1"]["response_code"], by_id["tx-1"]["review"]) == ("00", True)
    assert (by_id["tx-2"]["response_code"], by_id["tx-2"]["approved"]) == ("59", False)
    kinds = sorted(d["kind"] for d in received[topics.deadletter])
    assert kinds == ["malformed_json", "schema_violation"]
    assert sum(o.duplicates for o in hooks.outcomes) == 1
    # Everything consumed was committed, after its outputs were acknowledged.
    assert await committed_total(
        bootstrap, config.group_id, topics.decisions, kafka.partitions
    ) == len(messages)
