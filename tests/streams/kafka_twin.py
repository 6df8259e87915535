"""An in-memory twin of the Kafka producer under a Faust app, as the scoring step
reaches it (:func:`streams.scoring_loop.send_records`): Faust's producer with its
partitioner, and the aiokafka client's record batches, logged as they are sent."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import DefaultPartitioner


def done(value: Any = None) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


class FakeBatch:
    """aiokafka's ``BatchBuilder`` as :func:`streams.scoring_loop.send_records` uses it:
    full after ``capacity`` records (then closed, as the real one)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: None) -> Any:
        if self.closed or len(self.records) >= self.capacity:
            self.closed = True
            return None
        self.records.append((key, value))
        return object()


class FakeKafka:
    """The aiokafka producer under a Faust app: batches are logged as sent, and their
    futures acknowledge at once."""

    def __init__(self, on_record: Any, capacity: int = 3) -> None:
        self.on_record = on_record
        self.capacity = capacity
        self.batches: list[tuple[str, int, int]] = []  # topic, partition, records

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.batches.append((topic, partition, len(batch.records)))
        for key, value in batch.records:
            self.on_record(topic, partition, key, value)
        return done()


class FakeProducer:
    """Faust's producer as the step reaches it: its Kafka client and partitioner."""

    def __init__(self, on_record: Any) -> None:
        self.kafka = FakeKafka(on_record)
        self.partitioner = DefaultPartitioner()

    def _ensure_producer(self) -> FakeKafka:
        return self.kafka
