"""A Kafka broker that speaks SASL_SSL only (SCRAM-SHA-512 and -256) and a Redis that
speaks TLS only with a password, each a test's own (the shared dev stack is never
touched), and the ``FRAUDSTREAM__*`` settings of their clients.

The broker is started with the dev stack's own functions (``fraudstream.devstack.kafka``:
the same jars, ``server.properties`` and storage format), with extra properties for the
SASL_SSL listener and its SCRAM users created when the storage is formatted. The
controller listener stays PLAINTEXT on loopback (it serves no client API).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fraudstream.devstack import kafka as broker
from fraudstream.devstack import procs
from fraudstream.devstack.redis import server_binary
from fraudstream.devstack.stack import DEFAULT_CACHE
from fraudstream.devstack.testing import TestStack, free_ports, unique_env
from fraudstream.settings import DevstackSettings, KafkaSettings, load_settings
from streams.kafka_config import aiokafka_kwargs
from tests.streams.harness import DELIVERY_OVERRIDES
from tests.streams.tls_certs import Pki, make_pki

BROKER_USER, BROKER_PASSWORD = "broker", "broker-" + uuid.uuid4().hex
USER, PASSWORD = "fraudstream", "scram-" + uuid.uuid4().hex
USER_256, PASSWORD_256 = "fraudstream256", "scram256-" + uuid.uuid4().hex
REDIS_PASSWORD = "redis-" + uuid.uuid4().hex
SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


@dataclass(frozen=True)
class ScramBroker:
    bootstrap: str
    pki: Pki
    log: Path

    def env(self, mechanism: str = "SCRAM-SHA-512", **changes: str) -> dict[str, str]:
        """``FRAUDSTREAM__KAFKA__*`` variables for a client of this broker (``changes``:
        ``KEY=value`` replacing one of them, e.g. ``SASL_PASSWORD="wrong"``)."""
        user, password = (USER, PASSWORD) if mechanism.endswith("512") else (USER_256, PASSWORD_256)
        env = {
            "BOOTSTRAP_SERVERS": json.dumps([self.bootstrap]),
            "SECURITY_PROTOCOL": "SASL_SSL",
            "SASL_MECHANISM": mechanism,
            "SASL_USERNAME": user,
            "SASL_PASSWORD": password,
            "SSL_CAFILE": str(self.pki.ca),
        }
        env.update(changes)
        return {f"FRAUDSTREAM__KAFKA__{k}": v for k, v in env.items()}

    def kafka(self, mechanism: str = "SCRAM-SHA-512", **changes: str) -> KafkaSettings:
        return load_settings(None, self.env(mechanism, **changes)).kafka


def scram_properties(pki: Pki, port: int, controller_port: int) -> dict[str, str]:
    """What the broker's ``server.properties`` gets on top of the dev stack's."""
    jaas = f'{SCRAM_MODULE} required username="{BROKER_USER}" password="{BROKER_PASSWORD}";'
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.server_keystore_pem()),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki.ca),
        "ssl.client.auth": "none",
    }


@contextlib.contextmanager
def running_scram_broker(home: Path, start_timeout_s: float = 180) -> Iterator[ScramBroker]:
    """The broker, ready (a message round-tripped over SASL_SSL) and stopped afterwards."""
    pki = make_pki(home / "pki")
    port, controller_port = free_ports(2)
    devstack = DevstackSettings(
        home=home, kafka_port=port, kafka_controller_port=controller_port, kafka_heap="384m"
    )
    java = broker.java_binary()
    lib = broker.resolve_jars(DEFAULT_CACHE, lambda _: None)
    properties, data, log = home / "server.properties", home / "data", home / "broker.log"
    extra = scram_properties(pki, port, controller_port)
    properties.write_text(broker.server_properties(devstack, data, extra), "utf-8")
    users = [
        f"SCRAM-SHA-512=[name={BROKER_USER},password={BROKER_PASSWORD}]",
        f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]",
        f"SCRAM-SHA-256=[name={USER_256},password={PASSWORD_256}]",
    ]
    scram_args = [arg for user in users for arg in ("--add-scram", user)]
    broker.format_storage(java, lib, properties, data, home / "format.log", extra_args=scram_args)
    record, _ = procs.spawn(broker.broker_argv(java, lib, properties, devstack), log, cwd=home)
    try:
        running = ScramBroker(f"127.0.0.1:{port}", pki, log)
        client = aiokafka_kwargs(running.kafka())
        del client["bootstrap_servers"]
        broker.wait_ready(running.bootstrap, record.pid, log, start_timeout_s, client=client)
        yield running
    finally:
        procs.stop(record, grace_s=20)


@contextlib.contextmanager
def tls_redis(pki: Pki, data_dir: Path) -> Iterator[str]:
    """A Redis on TLS only (no plain port), with a password; yields its rediss:// url."""
    binary, _ = server_binary()
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no",
         "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not procs.port_answers("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        yield f"rediss://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def secured_env(kafka: ScramBroker, redis_url: str, data_dir: Path, bundle: Path) -> dict[str, str]:
    """``FRAUDSTREAM__*`` for a worker and an authorization service on ``kafka`` and the
    TLS Redis at ``redis_url``: topics and app id of their own, generous deadlines."""
    suffix = uuid.uuid4().hex[:10]
    stack = TestStack(kafka.bootstrap, redis_url)
    env = unique_env(stack, 0, suffix, data_dir / f"faust-{suffix}", {})
    env.update(kafka.env())
    env.update(
        {
            "FRAUDSTREAM__REDIS__PASSWORD": REDIS_PASSWORD,
            "FRAUDSTREAM__REDIS__SSL_CA_CERTS": str(kafka.pki.ca),
            "FRAUDSTREAM__REDIS__CONNECT_TIMEOUT_MS": "5000",
            "FRAUDSTREAM__REDIS__SOCKET_TIMEOUT_MS": "5000",
            "FRAUDSTREAM__MODELS__BUNDLE_DIR": str(bundle),
            **{f"FRAUDSTREAM__{k.upper()}": v for k, v in DELIVERY_OVERRIDES.items()},
            "FRAUDSTREAM__FEATURES__TIMEOUT_MS": "5000",
            "FRAUDSTREAM__AUTHORIZE__GROUP_ID": f"authorize-{suffix}",
            "FRAUDSTREAM__WORKER__RECONCILE": "false",
        }
    )
    return env
