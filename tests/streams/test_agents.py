"""The agents' small pure helpers and the scoring loop on stand-ins for Faust's stream
(the agents themselves run in the integration tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest
from aiokafka.partitioner import DefaultPartitioner

from fraudstream.errors import OutputRejected
from fraudstream.metrics import EngineMetrics, PrometheusStreamHooks
from streams.agents import partition_lags
from streams.batching import EventBatcher
from streams.scoring import BatchOutcome, NoHooks, RawMessage, StreamHooks
from streams.scoring_loop import ScoringObserver, SentBatch, score_stream, send_records
from tests.streams.kafka_twin import FakeProducer

HIGH = {("tx", 0): 100, ("tx", 1): 7, ("labels", 0): 3, ("tx-changelog", 0): 50}


def test_lag_is_high_water_minus_committed_for_the_input_topics_only() -> None:
    committed = {("tx", 0): 60, ("labels", 0): 3}
    lags = partition_lags([*HIGH, ("tx", 2)], HIGH.get, committed.get, {"tx", "labels"})
    # Nothing committed yet counts from 0; an unknown high water is left out.
    assert lags == {("labels", 0): 0, ("tx", 0): 40, ("tx", 1): 7}


def test_a_committed_offset_past_a_stale_high_water_is_no_negative_lag() -> None:
    assert partition_lags([("tx", 0)], {("tx", 0): 5}.get, {("tx", 0): 9}.get, {"tx"}) == {
        ("tx", 0): 0
    }


def test_the_prometheus_hooks_observe_the_scoring_agent_and_plain_hooks_do_not() -> None:
    assert isinstance(PrometheusStreamHooks(EngineMetrics()), ScoringObserver)
    assert not isinstance(NoHooks(), ScoringObserver)


# --- the scoring loop: pipelined batches, inputs acknowledged once delivered -----------


@dataclass(frozen=True)
class FakeMessage:
    key: bytes
    value: bytes
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class FakeEvent:
    message: FakeMessage


class ManualStream:
    """Stands in for Faust's ``stream.noack()``: events as the test releases them, and
    the acknowledgements the loop gives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[FakeEvent | None] = asyncio.Queue()
        self.acked: list[int] = []

    def put(self, *offsets: int) -> None:
        for offset in offsets:
            self.queue.put_nowait(FakeEvent(FakeMessage(b"k", b"{}", "tx", 0, offset)))

    async def events(self) -> AsyncIterator[FakeEvent]:
        while (event := await self.queue.get()) is not None:
            yield event

    async def ack(self, event: FakeEvent) -> bool:
        self.acked.append(event.message.offset)
        return True


@dataclass
class DeliveringStep:
    """Stands in for :class:`streams.agents.ScoringStep`: records each batch it is given
    and leaves the broker's acknowledgements of its outputs to the test."""

    sent: list[list[int]] = field(default_factory=list)
    acks: list[asyncio.Future[None]] = field(default_factory=list)

    async def send(self, messages: Sequence[RawMessage]) -> SentBatch:
        self.sent.append([m.offset for m in messages])
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return SentBatch(BatchOutcome(), [], [ack])


class CountingHooks(NoHooks):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch_processed(self, outcome: BatchOutcome, size: int, seconds: float) -> None:
        self.sizes.append(size)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def start_loop(
    stream: ManualStream, step: DeliveringStep, hooks: StreamHooks
) -> asyncio.Task[None]:
    batches = EventBatcher(stream.events(), max_batch=3, within_s=0.01)
    return asyncio.ensure_future(score_stream(stream, step, batches, hooks))


async def test_the_next_batch_is_decided_while_the_last_one_waits_for_the_broker() -> None:
    stream, step, hooks = ManualStream(), DeliveringStep(), CountingHooks()
    loop = start_loop(stream, step, hooks)
    stream.put(0, 1, 2, 3, 4, 5, 6)
    await until(lambda: len(step.sent) == 2)
    assert step.sent == [[0, 1, 2], [3, 4, 5]]
    assert stream.acked == []  # nothing acknowledged before the broker acknowledged it
    step.acks[0].set_result(None)
    await until(lambda: len(step.sent) == 3)
    assert stream.acked == [0, 1, 2] and hooks.sizes == [3]
    # One batch in delivery at a time: the third waits until the second is delivered.
    step.acks[2].set_result(None)
    await asyncio.sleep(0.02)
    assert stream.acked == [0, 1, 2]
    step.acks[1].set_result(None)
    await until(lambda: stream.acked == list(range(7)))
    assert hooks.sizes == [3, 3, 1]
    stream.queue.put_nowait(None)
    await asyncio.wait_for(loop, 1.0)


async def test_a_failed_delivery_ends_the_loop_and_acknowledges_nothing_after_it() -> None:
    stream, step = ManualStream(), DeliveringStep()
    loop = start_loop(stream, step, NoHooks())
    stream.put(0, 1, 2, 3, 4, 5)
    await until(lambda: len(step.sent) == 2)
    step.acks[1].set_result(None)
    step.acks[0].set_exception(RuntimeError("broker refused"))
    with pytest.raises(RuntimeError, match="broker refused"):
        await asyncio.wait_for(loop, 1.0)
    assert stream.acked == []  # both batches are read again, and re-emitted from dedupe


async def test_a_delivery_the_broker_holds_back_is_reported_until_it_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, step = ManualStream(), DeliveringStep()
    batches = EventBatcher(stream.events(), max_batch=3, within_s=0.01)
    loop = asyncio.ensure_future(
        score_stream(stream, step, batches, NoHooks(), stuck_warning_s=0.02)
    )
    stream.put(0, 1, 2)
    await until(lambda: len(step.sent) == 1)
    await until(lambda: len(caplog.records) >= 2)  # again while it still waits
    assert "1 of 1 record batches of outputs not acknowledged" in caplog.records[0].getMessage()
    assert stream.acked == []
    step.acks[0].set_result(None)
    await until(lambda: stream.acked == [0, 1, 2])
    reported = len(caplog.records)
    await asyncio.sleep(0.06)
    assert len(caplog.records) == reported  # nothing more once delivered
    stream.queue.put_nowait(None)
    await asyncio.wait_for(loop, 1.0)


async def test_a_failed_loop_releases_everything_it_held_and_acknowledges_none() -> None:
    """What it held (in delivery, decided, buffered) is let go for Faust's bookkeeping,
    which otherwise waits for it forever before a rebalance or a stop."""
    stream, step = ManualStream(), DeliveringStep()
    released: list[int] = []
    batches = EventBatcher(stream.events(), max_batch=3, within_s=0.01)
    loop = asyncio.ensure_future(
        score_stream(
            stream,
            step,
            batches,
            NoHooks(),
            release=lambda events: released.extend(e.message.offset for e in events),
        )
    )
    stream.put(*range(9))
    await until(lambda: len(step.sent) == 2)  # 0-2 in delivery, 3-5 decided, 6-8 buffered
    step.acks[0].set_exception(RuntimeError("broker refused"))
    with pytest.raises(RuntimeError, match="broker refused"):
        await asyncio.wait_for(loop, 1.0)
    assert sorted(released) == list(range(9))
    assert stream.acked == []


# --- producing: one record batch per partition ----------------------------------------


async def test_records_go_out_as_one_batch_per_partition_in_order() -> None:
    sent: list[tuple[int, bytes | None, bytes | None]] = []
    producer = FakeProducer(lambda topic, p, key, value: sent.append((p, key, value)))
    producer.kafka.capacity = 100
    keyed = [(f"card-{i % 7}".encode(), f"v{i}".encode(), None) for i in range(40)]
    placed = [(b"t1", b"x", 2), (b"t2", None, 2)]  # a changelog entry and a tombstone
    acks = await send_records(producer, "decisions", [*keyed, *placed])
    # The partition the producer's own partitioner gives each key, as send() would.
    choose = DefaultPartitioner()
    want = {(choose(k, [0, 1, 2, 3], [0, 1, 2, 3]), k, v) for k, v, _ in keyed}
    assert set(sent) == want | {(2, b"t1", b"x"), (2, b"t2", None)}
    partitions = [p for _, p, _ in producer.kafka.batches]
    assert len(partitions) == len(set(partitions)) == len(acks)  # one batch each
    for partition in set(partitions):  # order kept within each partition
        mine = [(k, v) for p, k, v in sorted(want, key=lambda r: int(r[2][1:])) if p == partition]
        if partition == 2:
            mine += [(b"t1", b"x"), (b"t2", None)]
        assert [(k, v) for p, k, v in sent if p == partition] == mine


async def test_a_full_batch_is_sent_and_the_rest_goes_in_the_next() -> None:
    sent: list[bytes | None] = []
    producer = FakeProducer(lambda topic, p, key, value: sent.append(value))
    producer.kafka.capacity = 3
    records = [(b"k", str(i).encode(), 1) for i in range(8)]
    acks = await send_records(producer, "decided-log", records)
    assert sent == [str(i).encode() for i in range(8)]  # each once, in order
    assert [size for _, _, size in producer.kafka.batches] == [3, 3, 2]
    assert len(acks) == 3
    assert await send_records(producer, "decided-log", []) == []
    assert len(producer.kafka.batches) == 3  # nothing sent for nothing


async def test_a_record_no_empty_batch_takes_fails_the_batch_rather_than_vanish() -> None:
    producer = FakeProducer(lambda *record: None)
    producer.kafka.capacity = 0  # even an empty batch refuses it (aiokafka takes any first)
    with pytest.raises(OutputRejected) as caught:
        await send_records(producer, "decisions", [(b"k", b"12345", 3)])
    assert (caught.value.topic, caught.value.partition, caught.value.size) == ("decisions", 3, 6)
    assert producer.kafka.batches == []
