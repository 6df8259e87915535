"""Create the engine's topics explicitly (idempotent), instead of relying on broker
auto-creation: partition counts decide parallelism and co-partitioning, so they are set
on purpose. Transactions, decisions, authorizations and settlements are all keyed by
card id and share one partition count, so a card's events meet on the same partition
number everywhere."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from fraudstream.settings import KafkaSettings
from streams.kafka_config import aiokafka_kwargs


def topic_names(kafka: KafkaSettings) -> list[str]:
    return list(kafka.topics.model_dump().values())


async def ensure_topics(kafka: KafkaSettings) -> list[str]:
    """Create every configured topic that does not exist yet; return those created."""
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [name for name in topic_names(kafka) if name not in existing]
        if not wanted:
            return []
        new = [
            NewTopic(
                name, num_partitions=kafka.partitions, replication_factor=kafka.replication_factor
            )
            for name in wanted
        ]
        # Another worker may win the race to create them; that is fine.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        return wanted
    finally:
        await admin.close()
