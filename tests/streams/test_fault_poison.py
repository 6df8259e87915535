"""Poison input through a running ``fraudstream worker`` (issue 8, item 6).

Hypothesis draws mixed streams of arbitrary bytes, huge payloads (up to nearly the
broker's 1 MiB message limit), known fields with wrong types, unknown or malformed
schema versions and valid transactions; they go to the real transactions topic of one
worker that runs for the whole module. Every bad message must come out on the
dead-letter topic, with a kind and a reason, pointing back to its exact partition and
offset, its bytes kept (the head, size and digest of a very large one); every valid
transaction must be decided; and the worker must still be running at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudstream.devstack.testing import unique_env
from fraudstream.settings import load_settings
from fraudstream.wire.decode import ORIGINAL_KEPT_BYTES
from fraudstream.wire.pan import find_pans, letters_digest
from streams.topics import ensure_topics
from tests.streams.harness import DELIVERY_OVERRIDES, FraudstreamProcess, TopicTail, transaction

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

BROKER_LIMIT = 1_000_000  # under Kafka's default max.message.bytes (1 MiB + 12)


class PoisonWorker:
    def __init__(self, settings: Any, process: FraudstreamProcess) -> None:
        self.settings = settings
        self.process = process
        self.bootstrap = ",".join(settings.kafka.bootstrap_servers)
        self.sent = 0
        self.valid_at: set[tuple[int, int]] = set()  # where the last stream's valid ones went


@pytest.fixture(scope="module")
def poison_worker(
    stack: Any, redis_test_db: int, tmp_path_factory: pytest.TempPathFactory, engine_bundle: Path
) -> Iterator[PoisonWorker]:
    tmp = tmp_path_factory.mktemp("poison")
    suffix = uuid.uuid4().hex[:10]
    env = unique_env(
        stack,
        redis_test_db,
        suffix,
        tmp / "faust",
        {
            "models__bundle_dir": str(engine_bundle),
            "models__gnn_refresh_check_s": "0",
            **DELIVERY_OVERRIDES,
        },
    )
    settings = load_settings(None, env)
    asyncio.run(ensure_topics(settings.kafka))
    process = FraudstreamProcess(["worker"], env, tmp / "worker.log").start()
    try:
        process.wait_for("Ready", timeout=120)
        yield PoisonWorker(settings, process)
    finally:
        assert process.stop() == 0, (tmp / "worker.log").read_text()[-3000:]


VALID_FIELDS = transaction(0)
CONTAINERS = st.one_of(
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
# For each known field, values of a type it does not accept.
WRONG_TYPED = {
    "amount": st.one_of(CONTAINERS, st.text(max_size=30)),
    "event_time": st.one_of(CONTAINERS, st.integers(), st.text(max_size=8).map(lambda t: t + "?")),
    "card_id": st.one_of(CONTAINERS, st.integers(), st.floats(allow_nan=False)),
    "currency": st.one_of(CONTAINERS, st.integers(), st.just("euros")),
    "terminal_id": st.one_of(CONTAINERS, st.integers(), st.just("")),
}


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    """A transaction with one known field replaced by a value of another type."""
    field = draw(st.sampled_from(sorted(WRONG_TYPED)))
    value = draw(WRONG_TYPED[field])
    return json.dumps({**VALID_FIELDS, "transaction_id": "wrong-type", field: value}).encode()


@st.composite
def unknown_versions(draw: st.DrawFn) -> bytes:
    version = draw(
        st.one_of(st.integers().filter(lambda v: v != 1), st.text(max_size=5), st.none())
    )
    return json.dumps({**VALID_FIELDS, "schema_version": version}).encode()


huge = st.integers(min_value=70_000, max_value=BROKER_LIMIT - 1_000).map(
    lambda n: b'{"schema_version":1,"transaction_id":"' + b"h" * n + b'"}'
)
garbage = st.binary(max_size=2_000).filter(lambda b: not b.strip().startswith(b"{"))
poison = st.one_of(garbage, huge, wrong_types(), unknown_versions())


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[bool, bytes | None, bytes]]:
    """(is_valid, key, value) in produce order: poison spread among valid ones."""
    bad = draw(st.lists(poison, min_size=5, max_size=25))
    good = draw(st.integers(min_value=5, max_value=40))
    order = draw(st.permutations([True] * good + [False] * len(bad)))
    keys = st.one_of(st.none(), st.binary(max_size=20))
    out: list[tuple[bool, bytes | None, bytes]] = []
    bad_iter = iter(bad)
    for valid in order:
        out.append((valid, draw(keys), b"" if valid else next(bad_iter)))
    return out


async def send(worker: PoisonWorker, stream: list[tuple[bool, bytes | None, bytes]]) -> Any:
    """Produce the stream (valid messages numbered afresh); the location of each bad
    message and the ids of the valid ones."""
    producer = AIOKafkaProducer(
        bootstrap_servers=worker.bootstrap, acks="all", max_request_size=BROKER_LIMIT + 4096
    )
    await producer.start()
    bad: dict[tuple[int, int], bytes] = {}
    valid_ids: set[str] = set()
    worker.valid_at = set()
    start = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(days=worker.sent)
    try:
        for is_valid, key, poisoned in stream:
            value = poisoned
            if is_valid:
                tx = transaction(worker.sent, start=start)
                # Letters only: an id with a run of 13+ digits that passes the Luhn
                # check is tokenized at ingress (tests/fraudstream/test_pan.py).
                tx["transaction_id"] = "ok-" + letters_digest(uuid.uuid4().bytes)[:32]
                worker.sent += 1
                valid_ids.add(tx["transaction_id"])
                value = json.dumps(tx).encode()
            topic = worker.settings.kafka.topics.transactions
            meta = await producer.send_and_wait(topic, value, key=key)
            if is_valid:
                worker.valid_at.add((meta.partition, meta.offset))
            else:
                bad[(meta.partition, meta.offset)] = value
    finally:
        await producer.stop()
    return bad, valid_ids


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream=streams())
def test_poison_goes_to_the_dead_letter_topic_and_the_worker_goes_on(
    poison_worker: PoisonWorker, stream: list[tuple[bool, bytes | None, bytes]]
) -> None:
    asyncio.run(check(poison_worker, stream))


async def check(worker: PoisonWorker, stream: list[tuple[bool, bytes | None, bytes]]) -> None:
    topics = worker.settings.kafka.topics
    tail = await TopicTail(worker.bootstrap, [topics.decisions, topics.deadletter]).start()
    try:
        bad, valid_ids = await send(worker, stream)
        source = topics.transactions

        def done(got: dict[str, list[Any]]) -> bool:
            letters = {(d["partition"], d["offset"]) for d in got[topics.deadletter]}
            decided = {d["transaction_id"] for d in got[topics.decisions]}
            return set(bad) <= letters and valid_ids <= decided

        try:
            await tail.wait(done, timeout=120, what="every message answered")
        except TimeoutError as exc:
            got = tail.received
            letters = {(d["partition"], d["offset"]) for d in got[topics.deadletter]}
            decided = {d["transaction_id"] for d in got[topics.decisions]}
            missing = {
                "bad (partition, offset, size)": [
                    (*where, len(bad[where])) for where in sorted(set(bad) - letters)
                ],
                "valid ids": sorted(valid_ids - decided),
            }
            raise AssertionError(f"{exc}; not answered: {missing}") from exc
    finally:
        received = await tail.stop(settle_s=0.5)
    assert worker.process.proc is not None and worker.process.proc.poll() is None

    letters = {
        (d["partition"], d["offset"]): d
        for d in received[topics.deadletter]
        if d["source_topic"] == source
    }
    for where, original in bad.items():
        letter = letters[where]
        assert letter["kind"] in {
            "malformed_json",
            "schema_violation",
            "oversize",
            "unknown_version",
        }
        assert letter["reason"]
        kept = base64.b64decode(letter["original"])
        if find_pans(original):
            # A number that looks like a card's is tokenized at ingress, even in garbage.
            assert not find_pans(kept)
        elif len(original) > ORIGINAL_KEPT_BYTES:
            assert letter["original_truncated"] and kept == original[:ORIGINAL_KEPT_BYTES]
            assert letter["original_size"] == len(original)
            assert letter["original_sha256"] == letters_digest(original)
        else:
            assert kept == original
    decided = {d["transaction_id"] for d in received[topics.decisions]}
    assert valid_ids <= decided
    # No valid message was dead-lettered, no bad one decided.
    assert not worker.valid_at & set(letters)
    assert "wrong-type" not in decided
