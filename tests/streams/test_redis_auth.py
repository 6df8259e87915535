"""Redis AUTH: the configured password reaches the feature store's client, and with
auth configured on the server an unauthenticated connection is refused (no silent
fallback to an open connection)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from features.online import RedisFeatureStore
from fraudstream.devstack.redis import server_binary
from fraudstream.errors import FeatureStoreUnavailable
from fraudstream.settings import load_settings
from streams.worker import redis_client
from tests.features.test_online import make_tx

PASSWORD = "correct-horse-battery-staple"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[int]:
    """A throwaway Redis on loopback that requires a password."""
    binary, _ = server_binary()
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, password=PASSWORD).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_unauthenticated_connection_is_refused(protected_redis: int) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=protected_redis).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=protected_redis, password="wrong").ping()


def test_configured_password_reaches_the_feature_store(protected_redis: int) -> None:
    url = f"redis://127.0.0.1:{protected_redis}/0"
    with_password = load_settings(
        None, {"FRAUDSTREAM__REDIS__URL": url, "FRAUDSTREAM__REDIS__PASSWORD": PASSWORD}
    )
    assert PASSWORD not in repr(with_password)  # a secret never shows in reprs or logs
    store = RedisFeatureStore(redis_client(with_password), timeout_ms=2_000)
    assert store.apply_labels([]) == 0
    assert redis_client(with_password).ping()

    without = load_settings(None, {"FRAUDSTREAM__REDIS__URL": url})
    unauthenticated = RedisFeatureStore(redis_client(without), timeout_ms=2_000)
    with pytest.raises(FeatureStoreUnavailable):
        unauthenticated.compute([make_tx(1, at=timedelta(0))])
