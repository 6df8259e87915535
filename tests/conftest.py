"""Shared fixtures.

Integration tests talk to a real Kafka broker and a real Redis: the ``stack`` fixture
uses the ones named by ``FRAUDSTREAM_TEST_KAFKA`` (bootstrap servers, comma-separated)
and ``FRAUDSTREAM_TEST_REDIS_URL`` when both are set, and otherwise brings the dev stack
(``fraudstream devstack up``) up once per session, reusing one that already runs. It
stops the dev stack at the end only if it started it and no other test session still
uses it. Any test that uses ``stack`` (directly or through ``make_settings``,
``redis_client`` or ``kafka_admin``) is marked ``integration`` automatically; unit tests
(``unit_settings``) never touch it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fraudstream.devstack.testing import KafkaAdmin, RedisDbLease, TestStack, shared_dev_stack
from fraudstream.devstack.testing import unique_env as _unique_env
from fraudstream.settings import Settings, load_settings

_STACK_FIXTURES = {"stack", "make_settings", "redis_client", "kafka_admin", "redis_test_db"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[TestStack]:
    kafka = os.environ.get("FRAUDSTREAM_TEST_KAFKA", "").strip()
    redis_url = os.environ.get("FRAUDSTREAM_TEST_REDIS_URL", "").strip()
    if kafka and redis_url:
        yield TestStack(kafka, redis_url, external=True)
        return
    if kafka or redis_url:
        raise pytest.UsageError(
            "set both FRAUDSTREAM_TEST_KAFKA and FRAUDSTREAM_TEST_REDIS_URL, or neither "
            "(then the tests bring the dev stack up)"
        )
    # The dev stack as configured (config/fraudstream.toml, FRAUDSTREAM__DEVSTACK__*).
    devstack_env = {
        k: v for k, v in os.environ.items() if k.upper().startswith("FRAUDSTREAM__DEVSTACK__")
    }
    with shared_dev_stack(load_settings(None, devstack_env).devstack) as running:
        yield running


@pytest.fixture(scope="session")
def redis_test_db(stack: TestStack) -> Iterator[int]:
    """A Redis logical database leased to this test session alone."""
    lease = RedisDbLease(stack.redis_url)
    db = lease.acquire()
    yield db
    lease.release()


@pytest.fixture
def make_settings(stack: TestStack, redis_test_db: int, tmp_path: Path) -> Callable[..., Any]:
    """``make_settings(**{"scoring__max_batch_size": "64"})``: Settings pointing at the test
    stack, with topic names and a worker app id unique to this call (so tests never see
    each other's messages) and the session's own Redis DB. Keys are ``section__key``
    (any case) and become ``FRAUDSTREAM__SECTION__KEY``; non-string values are JSON.

    ``make_settings(with_env=True, ...)`` returns ``(settings, env)``, ``env`` being the
    ``FRAUDSTREAM__*`` variables that build the same settings in a child process."""

    def build(
        *, with_env: bool = False, **overrides: Any
    ) -> Settings | tuple[Settings, dict[str, str]]:
        suffix = uuid.uuid4().hex[:10]
        env = _unique_env(stack, redis_test_db, suffix, tmp_path / f"faust-{suffix}", overrides)
        settings = load_settings(None, env)
        return (settings, env) if with_env else settings

    return build


@pytest.fixture
def unit_settings(tmp_path: Path) -> Settings:
    """Settings from the defaults and config/fraudstream.toml; needs no broker or Redis."""
    return load_settings(None, {"FRAUDSTREAM__WORKER__DATA_DIR": str(tmp_path / "faust")})


@pytest.fixture
def redis_client(stack: TestStack, redis_test_db: int) -> Iterator[Callable[..., Any]]:
    """``redis_client(**kwargs)``: a redis-py client on this session's test DB, flushed
    when the first client of a test is made."""
    import redis

    from fraudstream.devstack.testing import with_db

    clients: list[redis.Redis] = []

    def make(**kwargs: Any) -> redis.Redis:
        client = redis.Redis.from_url(with_db(stack.redis_url, redis_test_db), **kwargs)
        if not clients:
            client.flushdb()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def kafka_admin(stack: TestStack) -> Iterator[KafkaAdmin]:
    """``kafka_admin.create_topics("a", "b", partitions=4)`` (or ``await
    kafka_admin.acreate_topics(...)``); the topics are deleted after the test."""
    admin = KafkaAdmin(stack.kafka_bootstrap)
    yield admin
    admin.cleanup()
