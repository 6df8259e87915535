"""Idempotent decisions: the pure split/remember/expire logic, and the scoring agent's
step (table write-through on the source partition, re-emits) on fakes of Faust."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from faust.serializers import codecs

from fraudstream.wire import Decision, Transaction, transaction_decoder
from streams.agents import ScoringStep
from streams.app import EngineTopics
from streams.dedupe import (
    DedupeConfig,
    DedupePlan,
    Deduplicator,
    Remembered,
    decode_by_partition,
)
from streams.scoring import (
    DeadlineDecider,
    Outgoing,
    PlaceholderPipeline,
    RawMessage,
    record_decisions,
)
from streams.topics import ensure_topics
from tests.streams.harness import (
    DELIVERY_OVERRIDES,
    FraudstreamProcess,
    consume_until,
    produce,
    transaction,
)
from tests.streams.kafka_twin import FakeProducer

NOW = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
DECODER = transaction_decoder(4096)
MINUTE_MS = 60_000


def tx_bytes(tx_id: str, card: str = "c1", amount: float = 10.0) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "transaction_id": tx_id,
            "event_time": "2025-03-01T12:00:00Z",
            "card_id": card,
            "terminal_id": "t1",
            "amount": amount,
            "currency": "EUR",
        }
    ).encode()


def make_messages(*ids: str, partition: int = 0, start: int = 0) -> list[RawMessage]:
    return [
        RawMessage(b"c1", tx_bytes(tx_id), "transactions", partition, start + n)
        for n, tx_id in enumerate(ids)
    ]


class CountingPipeline:
    """Decides like the placeholder, with a score that changes at every call: deciding
    a transaction twice would show as a different decision."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        self.seen += [t.transaction_id for t in transactions]
        score = len(self.seen) / 1e6
        return [
            Decision(**{**_fields(d), "score": score})
            for d in PlaceholderPipeline().decide(transactions, now)
        ]


def _fields(decision: Decision) -> dict[str, Any]:
    return {name: getattr(decision, name) for name in decision.__struct_fields__}


@dataclass
class Cycle:
    """The agent's use of the pure parts, against a dict standing for the table (values
    go through JSON, as the changelog does)."""

    dedupe: Deduplicator
    pipeline: CountingPipeline = field(default_factory=CountingPipeline)
    store: dict[str, Any] = field(default_factory=dict)

    def run(self, messages: Sequence[RawMessage], now_ms: int = 0) -> tuple[DedupePlan, Any]:
        outcome, valid = decode_by_partition(messages, DECODER, NOW)
        split = self.dedupe.split(valid, self.store)
        record_decisions(outcome, split.fresh, self.pipeline.decide(split.fresh, NOW))
        plan = self.dedupe.remember(split, outcome.decisions, now_ms, self.store)
        for write in plan.writes:
            if write.value is None:
                self.store.pop(write.key, None)
            else:
                self.store[write.key] = json.loads(json.dumps(write.value))
        return plan, outcome


def make_cycle(retention_s: float = 3600.0) -> Cycle:
    return Cycle(Deduplicator(DedupeConfig(retention_s=retention_s)))


def by_id(outputs: Sequence[Outgoing]) -> dict[str, bytes]:
    return {json.loads(o.value)["transaction_id"]: o.value for o in outputs}


def test_decode_by_partition_keeps_each_transactions_partition_and_the_dead_letters() -> None:
    messages = [
        *make_messages("a", "b", partition=1),
        RawMessage(None, b"{not json", "transactions", 2, 7),
        *make_messages("c", partition=3),
    ]
    outcome, valid = decode_by_partition(messages, DECODER, NOW)
    assert [(p, t.transaction_id) for p, t in valid] == [(1, "a"), (1, "b"), (3, "c")]
    assert outcome.rejected == {"malformed_json": 1}
    (letter,) = outcome.deadletters
    assert json.loads(letter.value)["partition"] == 2


def test_a_redelivered_transaction_gets_the_same_bytes_and_is_not_rescored() -> None:
    cycle = make_cycle()
    _, first = cycle.run(make_messages("a", "b"))
    plan, again = cycle.run(make_messages("b", "c", start=2), now_ms=1000)
    assert cycle.pipeline.seen == ["a", "b", "c"]
    assert plan.hits == 1
    (reemit,) = plan.reemits
    assert reemit == Outgoing(b"c1", by_id(first.decisions)["b"])
    assert list(by_id(again.decisions)) == ["c"]  # only the fresh one counts as decided
    assert again.outcomes == {"approve": 1}


def test_a_repeat_within_one_batch_is_decided_once_and_re_emitted() -> None:
    cycle = make_cycle()
    plan, outcome = cycle.run(make_messages("a", "b", "a", "a"))
    assert cycle.pipeline.seen == ["a", "b"]
    assert plan.hits == 2
    assert [o.value for o in plan.reemits] == [by_id(outcome.decisions)["a"]] * 2
    assert sorted(w.key for w in plan.writes) == ["a", "b"]


def test_an_invalid_message_reusing_a_decided_id_is_still_dead_lettered() -> None:
    cycle = make_cycle()
    cycle.run(make_messages("a"))
    bad = json.loads(tx_bytes("a"))
    bad["amount"] = "a lot"
    plan, outcome = cycle.run([RawMessage(b"c1", json.dumps(bad).encode(), "transactions", 0, 5)])
    assert plan.hits == 0 and not plan.reemits
    assert outcome.rejected == {"schema_violation": 1}


def test_a_new_deduplicator_recovers_from_the_table_alone() -> None:
    cycle = make_cycle()
    _, first = cycle.run(make_messages("a", "b", partition=3))
    restarted = Cycle(Deduplicator(DedupeConfig()), store=dict(cycle.store))
    plan, outcome = restarted.run(make_messages("a", "b", partition=3), now_ms=5)
    assert restarted.pipeline.seen == []
    assert not outcome.decisions
    assert by_id(plan.reemits) == by_id(first.decisions)
    assert restarted.dedupe.remembered() == 2


def test_entries_expire_after_the_retention_with_tombstones_on_their_partition() -> None:
    cycle = make_cycle(retention_s=60)
    cycle.run(make_messages("a", partition=2), now_ms=0)
    cycle.run(make_messages("b", partition=2), now_ms=30_000)
    plan, _ = cycle.run(make_messages("c", partition=2), now_ms=MINUTE_MS + 1)
    assert plan.expired == 1
    assert [(w.partition, w.key) for w in plan.writes if w.value is None] == [(2, "a")]
    assert set(cycle.store) == {"b", "c"}
    assert cycle.dedupe.remembered() == 2
    # Forgotten: a very late copy is decided again.
    plan, _ = cycle.run(make_messages("a", partition=2), now_ms=MINUTE_MS + 2)
    assert plan.hits == 0 and cycle.pipeline.seen.count("a") == 2


def test_expiry_order_is_rebuilt_after_a_recovery_and_other_partitions_are_untouched() -> None:
    cycle = make_cycle(retention_s=60)
    cycle.run(make_messages("p1-old", partition=1), now_ms=0)
    cycle.run(make_messages("p2-old", partition=2), now_ms=0)
    cycle.dedupe.reset()
    plan, _ = cycle.run(make_messages("p1-new", partition=1), now_ms=2 * MINUTE_MS)
    assert [w.key for w in plan.writes if w.value is None] == ["p1-old"]
    assert "p2-old" in cycle.store  # partition 2 had no traffic: not expired yet


def test_remember_needs_one_decision_per_fresh_transaction() -> None:
    cycle = make_cycle()
    _, valid = decode_by_partition(make_messages("a"), DECODER, NOW)
    split = cycle.dedupe.split(valid, {})
    with pytest.raises(ValueError, match="0 decisions for 1 fresh"):
        cycle.dedupe.remember(split, [], 0, {})


@pytest.mark.parametrize("value", [None, "x", {"p": 1}, {"p": "x", "at": 1, "k": None, "d": ""}])
def test_anything_but_a_stored_entry_is_not_remembered(value: Any) -> None:
    assert Remembered.from_value(value) is None


def test_entries_are_plain_json_and_round_trip() -> None:
    entry = Remembered(partition=3, at_ms=17, key=None, decision=b'{"x":1}')
    assert Remembered.from_value(json.loads(json.dumps(entry.to_value()))) == entry


# --- the agent's step, on fakes of the Faust table and topics -----------------------------


class FakeTopic:
    def __init__(self, log: list[tuple[str, Any]], name: str) -> None:
        self.name = name

        def sent(topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
            log.append((topic, (key, value)))

        self.app = type("FakeApp", (), {"producer": FakeProducer(sent)})()

    def get_topic_name(self) -> str:
        return self.name


class ChangelogProducer(FakeProducer):
    """The producer as the table's changelog writes reach it (JSON bytes, or None)."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.raw: list[tuple[bytes, bytes | None]] = []

        def sent(topic: str, partition: int, key: bytes, value: bytes | None) -> None:
            self.raw.append((key, value))
            decoded = None if value is None else json.loads(value)
            log.append(("changelog", (partition, json.loads(key), decoded, value is None)))

        super().__init__(sent)


class FakeTable:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.data: dict[str, Any] = {}
        self.app = type("FakeApp", (), {"producer": ChangelogProducer(log)})()
        self.changelog_topic = type("T", (), {"get_topic_name": lambda self: "decided-log"})()


@dataclass
class Observed:
    hits: list[int] = field(default_factory=list)

    def decisions_produced(self, decisions: Sequence[Decision], produced_at: datetime) -> None:
        return None

    def deduplicated(self, hits: int, remembered: int) -> None:
        self.hits.append(hits)

    def consumer_lag(self, lags: Any) -> None:
        return None

    def commit_guard(self, rewinds: int, uncounted_acks: int) -> None:
        return None

    def ingress_rewrites(self, per_field: Any) -> None:
        return None


def make_step(
    log: list[tuple[str, Any]], pipeline: CountingPipeline, clock: Clock
) -> tuple[ScoringStep, Any]:
    def fallback(txs: Sequence[Transaction], now: datetime, timed_out: bool) -> list[Decision]:
        raise AssertionError("no fallback expected")

    topics = EngineTopics(
        transactions=None,
        decisions=FakeTopic(log, "decisions"),
        deadletter=FakeTopic(log, "deadletter"),
        labels=None,
    )
    observer = Observed()
    table = FakeTable(log)
    decider = DeadlineDecider(pipeline, timeout_s=30.0, fallback=fallback)
    dedupe = Deduplicator(DedupeConfig(retention_s=60))
    step = ScoringStep(DECODER, decider, topics, table, dedupe, observer, clock=clock.now)
    return step, observer


@dataclass
class Clock:
    at: float = 1000.0

    def now(self) -> float:
        return self.at


async def test_the_step_writes_through_on_the_source_partition_before_producing() -> None:
    log: list[tuple[str, Any]] = []
    pipeline = CountingPipeline()
    clock = Clock()
    step, observer = make_step(log, pipeline, clock)
    await step.send(make_messages("a", partition=3))
    first = [entry for entry in log if entry[0] == "decisions"]
    assert [kind for kind, _ in log] == ["changelog", "decisions"]
    (_, (partition, key, value, _)) = log[0]
    assert (partition, key) == (3, "a")
    assert value["d"].encode() == first[0][1][1]

    log.clear()
    clock.at += 61  # past the retention: "a" is forgotten after this batch
    decisions = (await step.send(make_messages("a", "b", partition=3, start=1))).decisions
    assert pipeline.seen == ["a", "b"]
    assert decisions and [d.transaction_id for d in decisions] == ["b"]
    assert observer.hits == [0, 1]
    changelog = [entry[1] for entry in log if entry[0] == "changelog"]
    # "b" remembered, "a" expired with a real tombstone (a null value, not JSON null).
    assert (3, "a", None, True) in changelog
    assert [entry[1] for entry in log if entry[0] == "decisions"][-1] == first[0][1]


async def test_changelog_records_are_the_bytes_the_tables_json_codec_writes() -> None:
    """Recovery reads the changelog back through the table's JSON schema, and log
    compaction pairs records by key bytes: what the step writes directly must be what
    Faust's codec would have written, byte for byte (tombstone keys included)."""
    log: list[tuple[str, Any]] = []
    clock = Clock()
    step, _ = make_step(log, CountingPipeline(), clock)
    await step.send(make_messages("a", "b", partition=3))
    clock.at += 61  # "a" and "b" expire: their tombstones are written with this batch
    await step.send(make_messages("c", partition=3, start=2))
    producer = step.table.app.producer
    keys = [codecs.loads("json", key) for key, _ in producer.raw]
    assert sorted(keys) == ["a", "a", "b", "b", "c"]
    for key, value in producer.raw:
        assert key == codecs.dumps("json", codecs.loads("json", key))
        if value is not None:
            assert value == codecs.dumps("json", codecs.loads("json", value))


# --- on the real broker, with real worker processes ------------------------------------


def scrape(port: int, name: str) -> float:
    """The sum of the samples ``name`` (any labels) on the worker's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith((f"{name} ", f"{name}{{"))
    )


async def wait_for_series(port: int, name: str, *labels: str, timeout: float = 30.0) -> list[str]:
    """The exposition lines of ``name`` with all of ``labels`` (``key="value"``) once
    there is one (the lag report runs on a timer)."""
    lines: list[str] = []
    for _ in range(int(timeout / 0.5)):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            lines = [
                x
                for x in response.read().decode().splitlines()
                if x.startswith(f"{name}{{") and all(label in x for label in labels)
            ]
        if lines:
            break
        await asyncio.sleep(0.5)
    return lines


async def wait_for_metric(port: int, name: str, least: float, timeout: float = 30.0) -> float:
    """The sample once it reaches ``least``, or its last value after ``timeout`` (the
    hooks run just after the decisions are acknowledged, so a reader may see them first)."""
    got = 0.0
    for _ in range(int(timeout / 0.25)):
        got = await asyncio.to_thread(scrape, port, name)
        if got >= least:
            break
        await asyncio.sleep(0.25)
    return got


async def test_redelivered_transactions_get_their_decision_again_even_after_a_restart(
    stack: Any, make_settings: Any, engine_bundle: Any, tmp_path: Any
) -> None:
    settings, env = make_settings(
        with_env=True,
        models__bundle_dir=str(engine_bundle),
        **DELIVERY_OVERRIDES,
    )
    topics = settings.kafka.topics
    port = settings.worker.metrics_port
    await ensure_topics(settings.kafka)
    n = 300
    messages: list[tuple[bytes | None, bytes]] = [
        (t["card_id"].encode(), json.dumps(t).encode())
        for t in (transaction(i, cards=37) for i in range(n))
    ]

    async def decisions_after(total: int) -> list[dict[str, Any]]:
        got = await consume_until(
            stack.kafka_bootstrap,
            [topics.decisions],
            lambda received: len(received[topics.decisions]) >= total,
            timeout=90,
        )
        return list(got[topics.decisions])

    first = FraudstreamProcess(["worker"], env, tmp_path / "worker-1.log").start()
    try:
        first.wait_for("Ready", timeout=90)
        await produce(stack.kafka_bootstrap, topics.transactions, messages)
        assert len(await decisions_after(n)) == n
        # The same transactions again, as a producer retry or a redelivery would send them.
        await produce(stack.kafka_bootstrap, topics.transactions, messages)
        assert len(await decisions_after(2 * n)) == 2 * n
        assert await wait_for_metric(port, "fraudstream_dedupe_hits_total", n) == n
    finally:
        # Killed, not stopped: whatever it had not committed is redelivered.
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    # A new worker of the same group: the remembered decisions come back from the
    # table's changelog (Redis plays no part in it).
    second = FraudstreamProcess(["worker"], env, tmp_path / "worker-2.log").start()
    try:
        second.wait_for("Ready", timeout=90)
        await produce(stack.kafka_bootstrap, topics.transactions, messages)
        decisions = await decisions_after(3 * n)
        # At least the n produced again, plus what the killed worker had not committed.
        assert await wait_for_metric(port, "fraudstream_dedupe_hits_total", n) >= n
        assert scrape(port, "fraudstream_decisions_total") == 0  # nothing scored again
        # Consumer lag per input partition: everything read and committed, once the
        # commits have caught up (they never pass a message not processed).
        lags: list[float] = []
        for _ in range(60):
            lines = await wait_for_series(
                port, "fraudstream_consumer_lag", 'partition="0"', f'topic="{topics.transactions}"'
            )
            lags = [float(line.rsplit(" ", 1)[1]) for line in lines]
            if lags == [0.0]:
                break
            await asyncio.sleep(1.0)
        assert lags == [0.0]
    finally:
        assert second.stop() == 0, (tmp_path / "worker-2.log").read_text()[-3000:]

    copies: dict[str, list[dict[str, Any]]] = {}
    for d in decisions:
        copies.setdefault(d["transaction_id"], []).append(d)
    assert len(copies) == n
    # At least three copies of each decision, all identical (decided_at included): a
    # redelivered transaction is never decided again.
    assert all(len(c) >= 3 and all(x == c[0] for x in c) for c in copies.values())
