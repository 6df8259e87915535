"""Kafka with SASL/SCRAM over TLS, on a broker of this module's own
(``secured_stack``: SASL_SSL only, SCRAM-SHA-512 and -256, a throwaway CA; the shared
dev stack is never touched).

* clients built from fraudstream ``Settings`` through ``streams.kafka_config`` (the
  mapping the worker, the authorization service and the replay tool use) produce and
  consume over it;
* a plaintext client, a TLS client without SASL, a wrong password and a client that
  does not trust the broker's certificate are all refused;
* ``fraudstream worker`` and ``fraudstream authorize`` run on it, with a password- and
  TLS-protected Redis, and decide a replayed transaction end to end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from fraudstream.settings import KafkaSettings, Settings, load_settings
from streams.kafka_config import aiokafka_kwargs
from streams.replay import produce as replay_produce
from streams.topics import ensure_topics
from tests.streams.harness import FraudstreamProcess
from tests.streams.secured_stack import (
    BROKER_PASSWORD,
    PASSWORD,
    PASSWORD_256,
    REDIS_PASSWORD,
    ScramBroker,
    running_scram_broker,
    secured_env,
    tls_redis,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScramBroker]:
    with running_scram_broker(tmp_path_factory.mktemp("scram-kafka")) as running:
        yield running


async def round_trip(kafka: KafkaSettings, topic: str, value: bytes) -> list[bytes]:
    """Produce ``value`` to ``topic`` and read the topic back, with clients built by the
    project's settings mapping."""
    producer = AIOKafkaProducer(acks="all", **aiokafka_kwargs(kafka))
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, auto_offset_reset="earliest", group_id=None, **aiokafka_kwargs(kafka)
    )
    await consumer.start()
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                got += [r.value for r in records]
        return got
    finally:
        await consumer.stop()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
async def test_clients_from_settings_produce_and_consume_over_sasl_ssl(
    scram_broker: ScramBroker, mechanism: str
) -> None:
    kafka = scram_broker.kafka(mechanism)
    assert PASSWORD not in repr(kafka) and PASSWORD_256 not in repr(kafka)
    topic = f"scram-{mechanism.lower()}-{uuid.uuid4().hex[:8]}"
    value = f"hello over {mechanism}".encode()
    assert await round_trip(kafka, topic, value) == [value]


class Refusals:
    """Starts producers that must be refused; ``why`` is the exception plus what aiokafka
    logged while trying (it reports an authentication failure in its log and raises
    "Unable to bootstrap")."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    async def why(self, **client: Any) -> str:
        self.caplog.clear()
        producer = AIOKafkaProducer(request_timeout_ms=10_000, **client)
        try:
            with self.caplog.at_level(logging.WARNING, logger="aiokafka"):
                await asyncio.wait_for(producer.start(), 60)
        except (KafkaError, OSError, ssl.SSLError) as exc:
            return f"{type(exc).__name__}: {exc}\n{self.caplog.text}"
        finally:
            await producer.stop()
        raise AssertionError(f"a client with {sorted(client)} was let in")


AUTH_FAILED = "SaslAuthenticationFailed: Authentication failed"


async def test_clients_without_valid_credentials_are_refused(
    scram_broker: ScramBroker, caplog: pytest.LogCaptureFixture
) -> None:
    refused = Refusals(caplog)
    good = aiokafka_kwargs(scram_broker.kafka())
    bootstrap = {"bootstrap_servers": scram_broker.bootstrap}
    # Plaintext to the SASL_SSL port: no TLS handshake, nothing served.
    why = await refused.why(**bootstrap)
    assert why.startswith("KafkaConnectionError") and "Unable to bootstrap" in why, why
    # TLS, but no SASL: the broker serves nothing before authentication.
    tls_only = {**bootstrap, "security_protocol": "SSL", "ssl_context": good["ssl_context"]}
    why = await refused.why(**tls_only)
    assert why.startswith("KafkaConnectionError") and "Unable to bootstrap" in why, why
    # SASL_SSL with a wrong password, an unknown user, or SHA-256 credentials offered as
    # SHA-512 (that user has no SHA-512 credential): authentication fails.
    for wrong in (
        scram_broker.kafka(SASL_PASSWORD="not-" + PASSWORD),
        scram_broker.kafka(SASL_USERNAME="mallory"),
        scram_broker.kafka("SCRAM-SHA-256", SASL_MECHANISM="SCRAM-SHA-512"),
    ):
        why = await refused.why(**aiokafka_kwargs(wrong))
        assert AUTH_FAILED in why, why
    # A client that does not trust the broker's certificate never sends its password.
    untrusting = scram_broker.kafka(SSL_CAFILE=str(scram_broker.pki.other_ca))
    why = await refused.why(**aiokafka_kwargs(untrusting))
    assert "CERTIFICATE_VERIFY_FAILED" in why, why
    # The admin client built from the good settings does get in.
    admin = AIOKafkaAdminClient(**good)
    await admin.start()
    try:
        assert isinstance(await admin.list_topics(), list)
    finally:
        await admin.close()


# --- the worker and the authorization service on the secured broker ----------------------


@pytest.fixture
def tls_redis_url(tmp_path: Path, scram_broker: ScramBroker) -> Iterator[str]:
    """A Redis of this test's own: TLS only, with a password."""
    with tls_redis(scram_broker.pki, tmp_path) as url:
        yield url


async def read_values(kafka: KafkaSettings, topic: str, want: int, timeout: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, auto_offset_reset="earliest", group_id=None, **aiokafka_kwargs(kafka)
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                got += [json.loads(r.value) for r in records]
        return got
    finally:
        await consumer.stop()


async def test_worker_and_authorize_decide_over_sasl_ssl(
    scram_broker: ScramBroker, tls_redis_url: str, engine_bundle: Path, tmp_path: Path
) -> None:
    env = secured_env(scram_broker, tls_redis_url, tmp_path, engine_bundle)
    settings: Settings = load_settings(None, env)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.redis.url.startswith("rediss://")
    await ensure_topics(settings.kafka)
    topics = settings.kafka.topics
    worker = FraudstreamProcess(["worker"], env, tmp_path / "worker.log").start()
    authorize = FraudstreamProcess(["authorize"], env, tmp_path / "authorize.log").start()
    try:
        worker.wait_for("Ready", timeout=180)
        authorize.wait_for("authorizing decisions", timeout=90)
        transactions: list[dict[str, Any]] = [
            {
                "schema_version": 1,
                "transaction_id": f"scram-tx-{i}",
                "event_time": f"2025-03-01T12:00:{i:02d}Z",
                "card_id": f"scram-card-{i % 3}",
                "terminal_id": "scram-term",
                "amount": 10.0 + i,
                "currency": "EUR",
            }
            for i in range(5)
        ]
        messages = [(t["card_id"].encode(), json.dumps(t).encode()) for t in transactions]
        await replay_produce(settings.kafka, topics.transactions, messages)
        decisions = await read_values(settings.kafka, topics.decisions, 5, timeout=120)
        authorizations = await read_values(settings.kafka, topics.authorizations, 5, timeout=120)
    finally:
        authorize_rc = authorize.stop()
        worker_rc = worker.stop()
    ids = {t["transaction_id"] for t in transactions}
    assert {d["transaction_id"] for d in decisions} == ids
    assert not any(d["timeout_default"] or d["degraded"] for d in decisions), decisions
    assert {a["transaction_id"] for a in authorizations} == ids
    assert worker_rc == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert authorize_rc == 0, (tmp_path / "authorize.log").read_text()[-3000:]
    for log in ("worker.log", "authorize.log"):
        text = (tmp_path / log).read_text()
        assert PASSWORD not in text and REDIS_PASSWORD not in text


def test_the_broker_and_its_storage_format_log_no_password(scram_broker: ScramBroker) -> None:
    for log in (scram_broker.log, scram_broker.log.with_name("format.log")):
        text = log.read_text()
        assert "--add-scram" in text or log == scram_broker.log
        for secret in (PASSWORD, PASSWORD_256, BROKER_PASSWORD):
            assert secret not in text, log
