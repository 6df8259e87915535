"""The scoring worker on the real broker: 1,000 transactions in, 1,000 decisions out,
malformed messages on the dead-letter topic."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streams.topics import ensure_topics
from tests.streams.harness import FraudstreamProcess, consume_until, produce, transaction

pytestmark = pytest.mark.integration

MALFORMED = [
    b"{this is not json",
    json.dumps({"schema_version": 99, "transaction_id": "future"}).encode(),
    json.dumps({**transaction(0), "amount": "a lot"}).encode(),
    json.dumps({**transaction(0), "merchant_id": "m" * 70_000}).encode(),
]


async def test_every_transaction_gets_exactly_one_decision(
    stack: Any, make_settings: Any, tmp_path: Path
) -> None:
    settings, env = make_settings(with_env=True)
    topics = settings.kafka.topics
    await ensure_topics(settings.kafka)

    worker = FraudstreamProcess(["worker"], env, tmp_path / "worker.log").start()
    try:
        worker.wait_for("Ready", timeout=90)
        valid = [transaction(i) for i in range(1000)]
        messages: list[tuple[bytes | None, bytes]] = [
            (t["card_id"].encode(), json.dumps(t).encode()) for t in valid
        ]
        # Bad messages spread through the stream, not only at the end.
        for n, bad in enumerate(MALFORMED):
            messages.insert(100 + 200 * n, (None, bad))
        await produce(stack.kafka_bootstrap, topics.transactions, messages)

        received = await consume_until(
            stack.kafka_bootstrap,
            [topics.decisions, topics.deadletter],
            lambda got: (
                len(got[topics.decisions]) >= 1000 and len(got[topics.deadletter]) >= len(MALFORMED)
            ),
            timeout=120,
        )
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    decisions = received[topics.decisions]
    ids = Counter(d["transaction_id"] for d in decisions)
    assert set(ids) == {t["transaction_id"] for t in valid}
    assert max(ids.values()) == 1, "a transaction was decided twice"
    by_id = {d["transaction_id"]: d for d in decisions}
    for t in valid[:50]:
        decision = by_id[t["transaction_id"]]
        assert decision["card_id"] == t["card_id"]
        assert decision["amount"] == t["amount"]
        assert decision["decision"] in {"approve", "review", "decline"}

    letters = received[topics.deadletter]
    assert sorted(base64.b64decode(d["original"]) for d in letters) == sorted(MALFORMED)
    kinds = Counter(d["kind"] for d in letters)
    assert kinds == {
        "malformed_json": 1,
        "unknown_version": 1,
        "schema_violation": 1,
        "oversize": 1,
    }
    assert all(d["source_topic"] == topics.transactions and d["reason"] for d in letters)
