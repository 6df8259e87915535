from __future__ import annotations

import ssl

import faust
import pytest

from fraudstream.settings import load_settings
from streams.kafka_config import aiokafka_kwargs, faust_credentials

SCRAM_ENV = {
    "FRAUDSTREAM__KAFKA__BOOTSTRAP_SERVERS": '["k1:9093","k2:9093"]',
    "FRAUDSTREAM__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
    "FRAUDSTREAM__KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
    "FRAUDSTREAM__KAFKA__SASL_USERNAME": "fraudstream",
    "FRAUDSTREAM__KAFKA__SASL_PASSWORD": "s3cret",
}


def test_plaintext_dev_defaults() -> None:
    kafka = load_settings(None, {}).kafka
    kwargs = aiokafka_kwargs(kafka)
    assert kwargs == {
        "bootstrap_servers": "127.0.0.1:19092",
        "client_id": "fraudstream",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(kafka) is None


def test_scram_over_tls_reaches_aiokafka() -> None:
    kwargs = aiokafka_kwargs(load_settings(None, SCRAM_ENV).kafka)
    assert kwargs["bootstrap_servers"] == "k1:9093,k2:9093"
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "fraudstream"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_scram_over_tls_reaches_faust() -> None:
    creds = faust_credentials(load_settings(None, SCRAM_ENV).kafka)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "fraudstream" and creds.password == "s3cret"
    assert creds.protocol.value == "SASL_SSL"


def test_tls_only_gives_ssl_credentials() -> None:
    kafka = load_settings(None, {"FRAUDSTREAM__KAFKA__SECURITY_PROTOCOL": "SSL"}).kafka
    assert isinstance(faust_credentials(kafka), faust.SSLCredentials)
    assert "sasl_mechanism" not in aiokafka_kwargs(kafka)


@pytest.mark.parametrize(
    "missing", ["FRAUDSTREAM__KAFKA__SASL_PASSWORD", "FRAUDSTREAM__KAFKA__SASL_MECHANISM"]
)
def test_incomplete_sasl_is_refused_at_start(missing: str) -> None:
    from fraudstream.errors import ConfigError

    env = {k: v for k, v in SCRAM_ENV.items() if k != missing}
    with pytest.raises(ConfigError):
        load_settings(None, env)


def test_the_worker_produces_record_batches_of_the_configured_size() -> None:
    from streams.app import create_app

    default = load_settings(None, {})
    assert create_app(default).conf.producer_max_batch_size == 1_000_000
    smaller = load_settings(None, {"FRAUDSTREAM__KAFKA__PRODUCER_BATCH_BYTES": "65536"})
    assert create_app(smaller).conf.producer_max_batch_size == 65536


def test_a_record_batch_smaller_than_16_kib_is_refused_naming_the_key() -> None:
    from fraudstream.errors import ConfigError

    with pytest.raises(ConfigError, match="producer_batch_bytes"):
        load_settings(None, {"FRAUDSTREAM__KAFKA__PRODUCER_BATCH_BYTES": "1000"})
