"""Helpers behind the pytest fixtures in ``tests/conftest.py`` (kept here, typed and
importable, so benchmarks and the demo can use them too). Nothing here imports pytest.

Several test sessions may share one dev stack (several engineers, one machine): each
session holds a shared lock on ``<home>/sessions.lock`` while it uses the stack, and the
session that started the stack stops it only when no other session holds that lock.
Each session leases its own Redis logical database, so ``FLUSHDB`` in one session never
wipes another's keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fraudstream.devstack import procs
from fraudstream.devstack.stack import DevStack
from fraudstream.settings import DevstackSettings, TopicSettings

LEASE_PREFIX = "fraudstream:test-db-lease:"
LEASE_TTL_S = 6 * 3600


@dataclass(frozen=True)
class TestStack:
    """The broker and Redis a test session talks to."""

    __test__ = False  # not a test class, despite the name

    kafka_bootstrap: str
    redis_url: str
    external: bool = False  # named by FRAUDSTREAM_TEST_KAFKA / FRAUDSTREAM_TEST_REDIS_URL
    started_here: bool = False  # this session brought the dev stack up
    kafka_pid: int | None = None  # the dev stack's processes (None: external)
    redis_pid: int | None = None

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]


@contextlib.contextmanager
def shared_dev_stack(settings: DevstackSettings) -> Iterator[TestStack]:
    """Bring the dev stack up (or join the one running) for the ``with`` block; take it
    down afterwards only if this block started it and no other session still uses it."""
    lock_path = settings.home / "sessions.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        stack = DevStack(settings)
        info = stack.up()
        yield TestStack(
            info.kafka_bootstrap,
            info.redis_url,
            started_here=not info.already_running,
            kafka_pid=info.kafka_pid,
            redis_pid=info.redis_pid,
        )
        if info.already_running:
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another session is using it; leave it up for them
        stack.down()
    finally:
        os.close(fd)


def with_db(url: str, db: int) -> str:
    """``url`` pointed at logical database ``db``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        return urlunsplit(parts._replace(query=f"{query}&db={db}".lstrip("&")))
    return urlunsplit(parts._replace(path=f"/{db}"))


@dataclass
class RedisDbLease:
    """A logical database of the Redis at ``url`` reserved for this session (DB 0 holds
    the leases and is never handed out)."""

    url: str
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    db: int = -1

    def acquire(self) -> int:
        import redis

        client = redis.Redis.from_url(with_db(self.url, 0))
        try:
            try:
                count = int(str(client.config_get("databases").get("databases", 16)))
            except redis.ResponseError:  # CONFIG is disabled on many managed Redis
                count = 16
            for db in range(1, count):
                if client.set(f"{LEASE_PREFIX}{db}", self.owner, nx=True, ex=LEASE_TTL_S):
                    self.db = db
                    return db
        finally:
            client.close()
        raise RuntimeError(f"all {count - 1} Redis test databases at {self.url} are leased")

    def release(self) -> None:
        import redis

        if self.db < 0:
            return
        client = redis.Redis.from_url(with_db(self.url, 0))
        try:
            key = f"{LEASE_PREFIX}{self.db}"
            if client.get(key) == self.owner.encode():
                client.delete(key)
        finally:
            client.close()
        self.db = -1


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that nothing listens on right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def unique_env(
    stack: TestStack, redis_db: int, suffix: str, data_dir: Path, overrides: dict[str, object]
) -> dict[str, str]:
    """``FRAUDSTREAM__*`` variables for one test: the stack's addresses, topics and a
    worker app id of its own, then ``overrides`` (``section__key`` names, any case)."""
    import json

    web_port, metrics_port = free_ports(2)
    env = {
        "FRAUDSTREAM__KAFKA__BOOTSTRAP_SERVERS": json.dumps(stack.bootstrap_servers),
        "FRAUDSTREAM__REDIS__URL": with_db(stack.redis_url, redis_db),
        "FRAUDSTREAM__WORKER__APP_ID": f"fraudstream-test-{suffix}",
        "FRAUDSTREAM__WORKER__DATA_DIR": str(data_dir),
        "FRAUDSTREAM__WORKER__WEB_PORT": str(web_port),
        "FRAUDSTREAM__WORKER__METRICS_PORT": str(metrics_port),
        "FRAUDSTREAM__FEATURES__LABEL_STORE_DIR": str(data_dir / "labels"),
        "FRAUDSTREAM__FEATURES__KEY_PREFIX": f"fs-{suffix}",
    }
    for name, default in TopicSettings().model_dump().items():
        env[f"FRAUDSTREAM__KAFKA__TOPICS__{name.upper()}"] = f"{default}.{suffix}"
    for key, value in overrides.items():
        name = key.upper()
        name = name if name.startswith("FRAUDSTREAM__") else f"FRAUDSTREAM__{name}"
        env[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return env


@dataclass
class KafkaAdmin:
    """Creates (and on ``cleanup`` deletes) topics on the test broker."""

    bootstrap: str
    created: list[str] = field(default_factory=list)

    async def acreate_topics(self, *names: str, partitions: int = 4) -> list[str]:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            topics = [NewTopic(n, partitions, 1) for n in names]
            response = await admin.create_topics(topics, timeout_ms=30_000)
            for topic, code, *message in response.topic_errors:
                if code not in (0, 36):  # 36: already exists
                    raise RuntimeError(f"create topic {topic}: error {code} {message}")
        finally:
            await admin.close()
        self.created.extend(n for n in names if n not in self.created)
        return list(names)

    def create_topics(self, *names: str, partitions: int = 4) -> list[str]:
        """Sync form; safe to call from inside a running event loop as well."""
        return procs.run_sync(lambda: self.acreate_topics(*names, partitions=partitions))

    async def adelete_topics(self, *names: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(names), timeout_ms=30_000)
        finally:
            await admin.close()

    def cleanup(self) -> None:
        if self.created:
            with contextlib.suppress(Exception):
                procs.run_sync(lambda: self.adelete_topics(*self.created))
            self.created.clear()
