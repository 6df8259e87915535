"""The scoring worker on the real broker and Redis, with a trained engine: 1,000
transactions in, 1,000 decisions out (every layer run), malformed messages on the
dead-letter topic; labels applied, malformed labels dead-lettered."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from features.label_store import read_label_store
from streams.topics import ensure_topics
from tests.streams.harness import (
    DELIVERY_OVERRIDES,
    FraudstreamProcess,
    consume_until,
    produce,
    transaction,
)

pytestmark = pytest.mark.integration

BAD_LABEL = json.dumps({"schema_version": 1, "transaction_id": "x", "is_fraud": "maybe"}).encode()
MALFORMED = [
    b"{this is not json",
    json.dumps({"schema_version": 99, "transaction_id": "future"}).encode(),
    json.dumps({**transaction(0), "amount": "a lot"}).encode(),
    json.dumps({**transaction(0), "merchant_id": "m" * 70_000}).encode(),
]


LABELLED = range(0, 100, 7)


async def _recorded_frauds(settings: Any, frauds: dict[str, str]) -> set[str]:
    """The fraud labels found in the store's terminal fraud logs, once all are there or
    after 60 s (the labels agent runs beside the scoring agent)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis.url)
    prefix = settings.features.key_prefix
    found: set[str] = set()
    try:
        for _ in range(120):
            found = {
                tx
                for tx, terminal in frauds.items()
                if await client.zscore(f"{prefix}:t:{terminal}:f", tx) is not None
            }
            if found == set(frauds):
                break
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    return found


def label(i: int) -> dict[str, Any]:
    t = transaction(i)
    return {
        "schema_version": 1,
        "transaction_id": t["transaction_id"],
        "card_id": t["card_id"],
        "terminal_id": t["terminal_id"],
        "event_time": t["event_time"],
        "label_time": "2025-03-02T00:00:00Z",
        "is_fraud": i % 2 == 0,
        "source": "investigator",
    }


# The decider in the worker's process, and in a child of its own (worker.decider_process).
@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "child-process"])
async def test_every_transaction_gets_exactly_one_decision(
    stack: Any, make_settings: Any, engine_bundle: Path, tmp_path: Path, in_child: bool
) -> None:
    settings, env = make_settings(
        with_env=True,
        models__bundle_dir=str(engine_bundle),
        worker__decider_process=str(in_child).lower(),
        **DELIVERY_OVERRIDES,
    )
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
        labels: list[tuple[bytes | None, bytes]] = [
            (None, json.dumps(label(i)).encode()) for i in LABELLED
        ]
        labels.insert(3, (None, BAD_LABEL))
        await produce(stack.kafka_bootstrap, topics.labels, labels)

        received = await consume_until(
            stack.kafka_bootstrap,
            [topics.decisions, topics.deadletter],
            lambda got: (
                len(got[topics.decisions]) >= 1000
                and len(got[topics.deadletter]) >= len(MALFORMED) + 1
            ),
            timeout=120,
        )
        frauds = {
            label(i)["transaction_id"]: label(i)["terminal_id"] for i in LABELLED if i % 2 == 0
        }
        recorded = await _recorded_frauds(settings, frauds)
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert ("deciding in child process" in (tmp_path / "worker.log").read_text()) is in_child

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
    assert all(sorted(d["layers_run"]) == ["gnn", "iforest", "rules", "xgboost"] for d in decisions)
    # every applied label was also kept for training
    stored = read_label_store(settings.features.label_store_dir)
    assert set(stored["transaction_id"]) == {label(i)["transaction_id"] for i in LABELLED}
    assert not any(d["timeout_default"] for d in decisions)

    letters = [d for d in received[topics.deadletter] if d["source_topic"] == topics.transactions]
    (bad_label,) = [d for d in received[topics.deadletter] if d["source_topic"] == topics.labels]
    assert base64.b64decode(bad_label["original"]) == BAD_LABEL
    assert bad_label["kind"] == "schema_violation"
    # The fraud verdicts reached the feature store: each is in its terminal's fraud log.
    assert recorded == set(frauds)

    assert sorted(base64.b64decode(d["original"]) for d in letters) == sorted(MALFORMED)
    kinds = Counter(d["kind"] for d in letters)
    assert kinds == {
        "malformed_json": 1,
        "unknown_version": 1,
        "schema_violation": 1,
        "oversize": 1,
    }
    assert all(d["reason"] for d in letters)
