"""Redis over TLS: the [redis] TLS settings reach the feature store's client (redis-py),
and a TLS-only, password-protected Redis refuses plain, unverified and unauthenticated
connections while the configured client gets through."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fraudstream.devstack.redis import server_binary
from fraudstream.errors import ConfigError
from fraudstream.settings import Settings, load_settings
from streams import worker
from tests.streams.tls_certs import Pki, make_pki

PASSWORD = "tls-correct-horse-battery"
TLS_ENV = {
    "FRAUDSTREAM__REDIS__URL": "rediss://redis.internal:6380/2",
    "FRAUDSTREAM__REDIS__PASSWORD": PASSWORD,
    "FRAUDSTREAM__REDIS__SSL_CA_CERTS": "/etc/fraudstream/redis-ca.pem",
    "FRAUDSTREAM__REDIS__SSL_CERTFILE": "/etc/fraudstream/client.pem",
    "FRAUDSTREAM__REDIS__SSL_KEYFILE": "/etc/fraudstream/client.key",
}


def connection_kwargs(settings: Settings) -> dict[str, object]:
    client = worker.redis_client(settings)
    try:
        return dict(client.connection_pool.connection_kwargs)
    finally:
        client.close()


def test_tls_settings_reach_the_redis_client() -> None:
    kwargs = connection_kwargs(load_settings(None, TLS_ENV))
    assert kwargs["ssl_ca_certs"] == "/etc/fraudstream/redis-ca.pem"
    assert kwargs["ssl_certfile"] == "/etc/fraudstream/client.pem"
    assert kwargs["ssl_keyfile"] == "/etc/fraudstream/client.key"
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["password"] == PASSWORD
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.internal", 6380, 2)


def test_hostname_check_can_be_turned_off_and_plain_redis_gets_no_tls_arguments() -> None:
    relaxed = load_settings(None, {**TLS_ENV, "FRAUDSTREAM__REDIS__SSL_CHECK_HOSTNAME": "false"})
    assert connection_kwargs(relaxed)["ssl_check_hostname"] is False
    plain = connection_kwargs(load_settings(None, {}))
    assert not [k for k in plain if k.startswith("ssl")]


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({**TLS_ENV, "FRAUDSTREAM__REDIS__URL": "redis://redis.internal:6379/0"}, "rediss://"),
        (
            {k: v for k, v in TLS_ENV.items() if not k.endswith("SSL_CERTFILE")},
            "ssl_keyfile needs ssl_certfile",
        ),
    ],
)
def test_tls_files_without_tls_are_refused_at_start(env: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_settings(None, env)


# --- a real TLS-only Redis --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Pki]]:
    """A throwaway Redis listening on TLS only (no plain port), with a password, that
    asks clients for a certificate signed by its CA (mutual TLS)."""
    try:
        binary, _ = server_binary()
    except Exception as exc:
        pytest.skip(f"no redis-server: {exc}")
    pki = make_pki(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                if "tls" in out.lower() and ("not" in out.lower() or "unrecognized" in out.lower()):
                    pytest.skip(f"this redis-server has no TLS support: {out[-300:]}")
                raise RuntimeError(f"redis-server exited: {out[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, pki
    finally:
        proc.terminate()
        proc.wait(10)


def tls_settings(
    port: int, pki: Pki, password: str | None = PASSWORD, ca: Path | None = None
) -> Settings:
    env = {
        "FRAUDSTREAM__REDIS__URL": f"rediss://localhost:{port}/0",
        "FRAUDSTREAM__REDIS__SSL_CA_CERTS": str(ca or pki.ca),
        "FRAUDSTREAM__REDIS__SSL_CERTFILE": str(pki.client_cert),
        "FRAUDSTREAM__REDIS__SSL_KEYFILE": str(pki.client_key),
        "FRAUDSTREAM__REDIS__CONNECT_TIMEOUT_MS": "5000",
        "FRAUDSTREAM__REDIS__SOCKET_TIMEOUT_MS": "5000",
    }
    if password is not None:
        env["FRAUDSTREAM__REDIS__PASSWORD"] = password
    return load_settings(None, env)


def _ping(settings: Settings) -> bool:
    client = worker.redis_client(settings)
    try:
        return bool(client.ping())
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_the_configured_client_gets_through_over_tls(tls_redis: tuple[int, Pki]) -> None:
    port, pki = tls_redis
    settings = tls_settings(port, pki)
    assert PASSWORD not in repr(settings)
    assert _ping(settings)
    client = worker.redis_client(settings)
    try:
        client.set("fraudstream:tls-probe", "ok")
        assert client.get("fraudstream:tls-probe") == b"ok"
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_plain_unverified_and_unauthenticated_connections_are_refused(
    tls_redis: tuple[int, Pki],
) -> None:
    port, pki = tls_redis
    # Plain TCP to the TLS port: the server never answers in clear.
    plain = redis.Redis(port=port, password=PASSWORD, socket_timeout=5, socket_connect_timeout=5)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    # TLS with the right password but no client certificate: the handshake fails.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(
            host="localhost", port=port, password=PASSWORD, ssl=True,
            ssl_ca_certs=str(pki.ca), socket_timeout=5, socket_connect_timeout=5,
        ).ping()  # fmt: skip
    # The client refuses a server whose certificate its CA did not sign.
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
        _ping(tls_settings(port, pki, ca=pki.other_ca))
    # The right certificates but no password, or a wrong one: authentication refused.
    with pytest.raises(redis.AuthenticationError):
        _ping(tls_settings(port, pki, password=None))
    with pytest.raises(redis.AuthenticationError):
        _ping(tls_settings(port, pki, password="wrong-password"))
