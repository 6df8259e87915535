"""Build the Faust app and its topics from settings. No module-level app object: the
worker, the tests and the demo each build their own from the settings they loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from fraudstream.settings import Settings
from streams.commit_guard import CommitGuardTransport
from streams.kafka_config import faust_credentials


@dataclass(frozen=True)
class EngineTopics:
    transactions: Any
    decisions: Any
    deadletter: Any
    labels: Any


class EngineApp(faust.App):
    """A Faust app whose consumer never commits past an unprocessed message
    (:mod:`streams.commit_guard` says why Faust's own can)."""

    def _new_transport(self) -> Any:
        return CommitGuardTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> faust.App:
    kafka = settings.kafka
    worker = settings.worker
    return EngineApp(
        worker.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers],
        broker_credentials=faust_credentials(kafka),
        broker_client_id=kafka.client_id,
        store="memory://",
        datadir=str(worker.data_dir),
        # at-least-once plus idempotent decisions: Faust's exactly_once has open bugs.
        processing_guarantee="at_least_once",
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_batch_size=kafka.producer_batch_bytes,
        # A worker that dies is replaced after this long, not Faust's default minute:
        # its partitions (and their decisions) wait for the session to expire.
        broker_session_timeout=10.0,
        # No standby table replicas: Faust's standby recovery crashes the worker when a
        # changelog partition holds no records (faust-streaming issue 597, "Offset must
        # be a positive integer", seen here when workers were killed mid-replay). A
        # partition that moves is recovered from its changelog instead (slower failover,
        # bounded by the dedupe retention).
        table_standby_replicas=0,
        broker_heartbeat_interval=3.0,
        web_enabled=False,
        autodiscover=False,
        # Faust's own Record machinery is not used: values are raw bytes decoded in
        # batches by msgspec.
        value_serializer="raw",
        key_serializer="raw",
    )


def declare_topics(app: faust.App, settings: Settings) -> EngineTopics:
    names = settings.kafka.topics
    partitions = settings.kafka.partitions

    def topic(name: str) -> Any:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )

    return EngineTopics(
        transactions=topic(names.transactions),
        decisions=topic(names.decisions),
        deadletter=topic(names.deadletter),
        labels=topic(names.labels),
    )
