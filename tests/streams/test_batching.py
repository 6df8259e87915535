"""The scoring agent's micro-batcher: fills while the previous batch is processed,
closes at the batch size or a window after its oldest event, loses and reorders
nothing, and reads no further than its capacity ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.batching import EventBatcher


class Source:
    """Events handed out as the test releases them (``put``), counting what was read."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | Exception | None] = asyncio.Queue()
        self.read = 0

    def put(self, *events: int) -> None:
        for event in events:
            self.queue.put_nowait(event)

    def end(self, error: Exception | None = None) -> None:
        self.queue.put_nowait(error)

    async def events(self) -> AsyncIterator[int]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            self.read += 1
            yield item


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_full_batch_closes_at_once_and_the_rest_waits_for_the_window() -> None:
    source = Source()
    async with EventBatcher(source.events(), max_batch=4, within_s=0.05) as batches:
        source.put(*range(6))
        assert await asyncio.wait_for(batches.next(), 0.02) == [0, 1, 2, 3]
        started = asyncio.get_running_loop().time()
        assert await batches.next() == [4, 5]
        assert asyncio.get_running_loop().time() - started >= 0.03


async def test_events_read_while_a_batch_is_processed_are_not_held_another_window() -> None:
    """The point of the batcher: the next batch fills during the previous one's work,
    and what waited through that work is handed out at once."""
    source = Source()
    async with EventBatcher(source.events(), max_batch=100, within_s=0.05) as batches:
        source.put(1)
        assert await batches.next() == [1]
        source.put(2, 3)
        await asyncio.sleep(0.08)  # "deciding" batch [1]: longer than the window
        assert source.read == 3
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batches.next() == [2, 3]
        assert loop.time() - started < 0.03


async def test_reading_pauses_at_the_capacity_and_resumes_when_batches_are_taken() -> None:
    source = Source()
    async with EventBatcher(source.events(), max_batch=3, within_s=1.0, capacity=5) as batches:
        source.put(*range(12))
        await settle()
        assert source.read == 5  # the rest stays in the stream (Faust's flow control)
        assert await batches.next() == [0, 1, 2]
        await settle()
        assert source.read == 8
        assert await batches.next() == [3, 4, 5]


async def test_the_end_of_the_stream_hands_out_what_is_left_then_stops() -> None:
    source = Source()
    async with EventBatcher(source.events(), max_batch=10, within_s=5.0) as batches:
        source.put(1, 2)
        source.end()
        assert await asyncio.wait_for(batches.next(), 1.0) == [1, 2]
        with pytest.raises(StopAsyncIteration):
            await batches.next()


async def test_a_failing_stream_raises_to_the_consumer_after_what_was_read() -> None:
    source = Source()
    async with EventBatcher(source.events(), max_batch=10, within_s=5.0) as batches:
        source.put(1)
        source.end(RuntimeError("consumer gone"))
        assert await asyncio.wait_for(batches.next(), 1.0) == [1]
        with pytest.raises(RuntimeError, match="consumer gone"):
            await batches.next()


async def test_leaving_the_block_stops_reading() -> None:
    source = Source()
    async with EventBatcher(source.events(), max_batch=2, within_s=1.0) as batches:
        source.put(1, 2)
        assert await batches.next() == [1, 2]
    source.put(3, 4)
    await settle()
    assert source.read == 2


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        EventBatcher(Source().events(), max_batch=0, within_s=0.01)


async def run_schedule(
    arrivals: Sequence[tuple[int, int]], pauses: Sequence[int], max_batch: int, capacity: int
) -> list[list[int]]:
    """Events arrive in bursts (``count``, then ``ticks`` event-loop turns of quiet);
    the consumer works ``pauses[i]`` turns on batch ``i``; returns the batches."""
    source = Source()
    total = sum(count for count, _ in arrivals)

    async def produce() -> None:
        n = 0
        for count, ticks in arrivals:
            source.put(*range(n, n + count))
            n += count
            for _ in range(ticks):
                await asyncio.sleep(0)
        source.end()

    got: list[list[int]] = []
    async with EventBatcher(
        source.events(), max_batch, within_s=0.001, capacity=capacity
    ) as batches:
        producer = asyncio.ensure_future(produce())
        while True:
            try:
                batch = await asyncio.wait_for(batches.next(), 5.0)
            except StopAsyncIteration:
                break
            got.append(batch)
            for _ in range(pauses[len(got) % len(pauses)]):
                await asyncio.sleep(0)
        await producer
    assert sum(len(b) for b in got) == total
    return got


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), min_size=1, max_size=12),
    pauses=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    max_batch=st.integers(1, 16),
    extra=st.integers(0, 20),
)
def test_every_event_comes_out_once_in_order_in_batches_of_at_most_the_size(
    arrivals: list[tuple[int, int]], pauses: list[int], max_batch: int, extra: int
) -> None:
    batches = asyncio.run(run_schedule(arrivals, pauses, max_batch, max_batch + extra))
    flat = [event for batch in batches for event in batch]
    assert flat == list(range(len(flat)))
    assert all(1 <= len(batch) <= max_batch for batch in batches)
