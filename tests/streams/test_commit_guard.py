"""The consumer's commit rule, on its bookkeeping alone: never past an offset that was
not processed; a hole is read again, and taken as real only when it stays."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP as FaustTP

from streams import commit_guard
from streams.commit_guard import CommitGuardConsumer

TP = FaustTP("transactions", 0)


class FakeApp:
    def __init__(self) -> None:
        self.consumer_generation_id = 7
        self.flowing = True
        self.flow_control = SimpleNamespace(is_active=lambda: self.flowing)
        self.topics = SimpleNamespace(acks_enabled_for=lambda topic: True)


def bare_consumer() -> tuple[CommitGuardConsumer, list[int]]:
    """The consumer's offset bookkeeping without a broker; seeks are recorded."""
    consumer = CommitGuardConsumer.__new__(CommitGuardConsumer)
    consumer.app = FakeApp()  # type: ignore[assignment]
    consumer._unacked_messages = set()
    consumer._waiting_for_ack = None
    consumer._n_acked = 0
    consumer.uncounted_acks = 0
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(lambda: None)
    consumer._holes = {}
    consumer._rewinding = asyncio.Lock()
    consumer._first_offsets = {}
    consumer._looking_up = set()

    async def earliest_offsets(*tps: Any) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
    consumer._read_offset = {}
    consumer.pause_partitions = lambda tps: None  # type: ignore[method-assign]
    consumer.resume_partitions = lambda tps: None  # type: ignore[method-assign]
    consumer.assignment = lambda: {TP}  # type: ignore[method-assign]
    consumer._rewind_tasks = set()
    consumer.rewinds_total = 0
    seeks: list[int] = []

    async def seek(tp: Any, offset: int) -> None:
        seeks.append(offset)

    consumer.seek = seek  # type: ignore[method-assign]
    return consumer, seeks


@pytest.fixture(autouse=True)
def _no_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit_guard, "SETTLE_STEP_S", 0.0)


async def rewinds_done(consumer: CommitGuardConsumer) -> None:
    await asyncio.sleep(0)
    await asyncio.gather(*consumer._rewind_tasks)


def ack(consumer: CommitGuardConsumer, *offsets: int) -> None:
    consumer._acked[TP].extend(offsets)
    consumer._acked_index[TP].update(offsets)


async def test_contiguous_acks_are_committed_as_faust_does() -> None:
    consumer, seeks = bare_consumer()
    consumer._committed_offset[TP] = 10
    ack(consumer, 10, 11, 12, 14)
    assert consumer._new_offset(TP) == 13  # up to the first gap, as Faust does
    assert seeks == []


async def test_a_single_missing_message_at_the_head_is_not_committed_but_read_again() -> None:
    consumer, seeks = bare_consumer()
    consumer._committed_offset[TP] = 10
    ack(consumer, 11, 12)  # Faust itself would commit 13 here: offset 10 lost
    assert consumer._new_offset(TP) is None
    await rewinds_done(consumer)
    assert seeks == [10]
    assert consumer._new_offset(TP) is None  # one read under way: no second seek yet
    await rewinds_done(consumer)
    assert seeks == [10]
    ack(consumer, 10)  # read again and processed
    assert consumer._new_offset(TP) == 13


async def test_a_jump_is_not_taken_for_missing_records() -> None:
    consumer, _ = bare_consumer()
    await consumer._add_gap(TP, 11, 60)  # Faust's fetch loop saw offsets jump
    consumer._committed_offset[TP] = 11
    ack(consumer, 60, 61)
    assert consumer._new_offset(TP) is None


async def test_a_hole_that_stays_after_several_reads_is_committed_past(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commit_guard, "RETRY_REWIND_S", 0.0)
    monkeypatch.setattr(commit_guard, "CONFIRM_GRACE_S", 0.0)
    consumer, seeks = bare_consumer()
    consumer._committed_offset[TP] = 10
    ack(consumer, 12, 13)  # 10 and 11: transaction markers, say
    for _ in range(commit_guard.CONFIRM_REWINDS):
        assert consumer._new_offset(TP) is None
        await rewinds_done(consumer)
    assert seeks == [10] * commit_guard.CONFIRM_REWINDS
    assert consumer._new_offset(TP) == 14
    assert consumer.rewinds_total == commit_guard.CONFIRM_REWINDS


@dataclass(eq=False)
class FakeMessage:
    offset: int
    generation_id: int
    tp: Any = TP
    topic: str = TP[0]
    acked: bool = False


def message(offset: int, generation: int) -> Any:
    return FakeMessage(offset, generation)


async def test_acks_of_messages_skipped_around_a_rebalance_are_never_committed() -> None:
    consumer, seeks = bare_consumer()
    consumer._committed_offset[TP] = 10
    app: Any = consumer.app
    # Faust's stream acknowledges what it skips: a message fetched in the generation
    # before, and one read while the flow is suspended.
    stale = message(10, generation=6)
    assert consumer.ack(stale) is False and stale.acked
    app.flowing = False
    suspended = message(11, generation=7)
    assert consumer.ack(suspended) is False and suspended.acked
    app.flowing = True
    assert consumer.ack(message(12, generation=7)) is True
    assert consumer.uncounted_acks == 2
    assert consumer._new_offset(TP) is None  # 10 and 11 were not processed: read again
    await rewinds_done(consumer)
    assert seeks == [10]
    consumer.ack(message(10, generation=7))
    consumer.ack(message(11, generation=7))
    assert consumer._new_offset(TP) == 13


async def test_without_a_commit_yet_the_partition_must_start_at_its_first_offset() -> None:
    consumer, seeks = bare_consumer()  # a new group: nothing committed (None)
    ack(consumer, 3, 4)  # 0..2 skipped: Faust itself would commit 5
    assert consumer._new_offset(TP) is None  # first offset looked up
    await rewinds_done(consumer)
    assert consumer._new_offset(TP) is None  # 0..2 missing: read again
    await rewinds_done(consumer)
    assert seeks == [0]
    ack(consumer, 0, 1, 2)
    assert consumer._new_offset(TP) == 5


async def test_a_hole_is_not_given_up_before_its_last_read_had_time_to_be_processed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commit_guard, "RETRY_REWIND_S", 0.0)
    consumer, seeks = bare_consumer()
    consumer._committed_offset[TP] = 10
    ack(consumer, 12, 13)
    for _ in range(commit_guard.CONFIRM_REWINDS + 2):
        assert consumer._new_offset(TP) is None
        await rewinds_done(consumer)
    # Three reads done, but the last one only just now: what it read may still be
    # waiting in the stream's buffer.
    assert seeks == [10] * commit_guard.CONFIRM_REWINDS
    ack(consumer, 10, 11)  # ... and it was
    assert consumer._new_offset(TP) == 14


async def test_a_released_message_is_done_for_faust_but_never_committed() -> None:
    """What a failed agent held: Faust's wait for outstanding messages ends, and the
    hole is read again instead of being committed."""
    consumer, seeks = bare_consumer()
    consumer._committed_offset[TP] = 10
    held = message(10, generation=7)
    consumer._unacked_messages.add(held)
    assert consumer.release(held) is True
    assert held.acked and held not in consumer._unacked_messages
    assert consumer.release(held) is False  # once
    assert consumer.ack(message(11, generation=7)) is True
    assert consumer._new_offset(TP) is None  # 10 was not processed: read again
    await rewinds_done(consumer)
    assert seeks == [10]
    consumer.ack(message(10, generation=7))
    assert consumer._new_offset(TP) == 12
