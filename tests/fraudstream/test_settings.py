from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fraudstream.errors import ConfigError, ConfigErrors
from fraudstream.settings import DEFAULT_CONFIG_FILE, Settings, load_settings, locate_key


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fraudstream.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_file_loads_and_matches_documented_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.kafka.bootstrap_servers == ["127.0.0.1:19092"]
    assert settings.kafka.topics.decisions_shadow == "decisions.shadow"
    assert settings.scoring.review_threshold < settings.scoring.decline_threshold
    assert DEFAULT_CONFIG_FILE.exists()


def test_environment_overrides_file_with_nested_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "[scoring]\ndecline_threshold = 0.7\n[kafka.topics]\ndecisions = 'a'\n")
    settings = load_settings(
        path,
        {
            "FRAUDSTREAM__SCORING__DECLINE_THRESHOLD": "0.9",
            "FRAUDSTREAM__KAFKA__TOPICS__DECISIONS": "from-env",
            "FRAUDSTREAM__KAFKA__BOOTSTRAP_SERVERS": '["b1:9092","b2:9092"]',
            "UNRELATED": "ignored",
        },
    )
    assert settings.scoring.decline_threshold == 0.9
    assert settings.kafka.topics.decisions == "from-env"
    assert settings.kafka.bootstrap_servers == ["b1:9092", "b2:9092"]


def test_settings_are_frozen() -> None:
    settings = load_settings(None, {})
    with pytest.raises(ValidationError):
        settings.scoring.decline_threshold = 0.1  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_bad_file_value_names_file_line_key_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\nclient_id = 'x'\npartitions = 'many'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    err = info.value
    assert err.source == str(path)
    assert err.line == 3
    assert err.key == "kafka.partitions"
    assert "integer" in err.reason
    assert f"{path}:3: kafka.partitions:" in str(err)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"FRAUDSTREAM__SCORING__REVIEW_THRESHOLD": "1.5"})
    assert info.value.source == "environment variable FRAUDSTREAM__SCORING__REVIEW_THRESHOLD"
    assert info.value.key == "scoring.review_threshold"
    assert info.value.line is None


def test_unknown_key_is_rejected_not_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[redis]\nurll = 'redis://x'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.key == "redis.urll"
    assert info.value.line == 2


def test_cross_field_rule_reports_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[scoring]\nreview_threshold = 0.9\ndecline_threshold = 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.key == "scoring"
    assert "review_threshold must not exceed" in info.value.reason
    assert info.value.line == 1


def test_sasl_without_credentials_is_rejected_naming_the_variables() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"FRAUDSTREAM__KAFKA__SECURITY_PROTOCOL": "SASL_SSL"})
    assert "FRAUDSTREAM__KAFKA__SECURITY_PROTOCOL" in info.value.source
    assert "sasl_mechanism is required" in info.value.reason


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\npartitions = 0\n[breaker]\nfailure_threshold = -1\n")
    with pytest.raises(ConfigErrors) as info:
        load_settings(path, {})
    keys = {e.key for e in info.value.errors}
    assert keys == {"kafka.partitions", "breaker.failure_threshold"}
    assert {e.line for e in info.value.errors} == {2, 4}


def test_invalid_toml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\npartitions = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.line == 2
    assert "invalid TOML" in info.value.reason


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_settings(tmp_path / "missing.toml", {})


def test_secrets_do_not_leak_in_repr() -> None:
    settings = load_settings(
        None,
        {
            "FRAUDSTREAM__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "FRAUDSTREAM__KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "FRAUDSTREAM__KAFKA__SASL_USERNAME": "svc",
            "FRAUDSTREAM__KAFKA__SASL_PASSWORD": "hunter2-secret",
            "FRAUDSTREAM__REDIS__PASSWORD": "redis-secret",
        },
    )
    text = repr(settings) + str(settings.model_dump())
    assert "hunter2-secret" not in text and "redis-secret" not in text
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2-secret"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("a = 1\n[x]\nb = 2\n", "x.b", 3),
        ("[x]\n[x.y]\nz = 1\n", "x.y.z", 3),
        ("[x]\nb = 2\n", "x.c", 1),  # absent key: point at its table
        ("a = 1\n", "q.r", None),
    ],
)
def test_locate_key(text: str, key: str, line: int | None) -> None:
    assert locate_key(text, key) == line


def test_every_section_is_documented_in_the_shipped_file() -> None:
    text = DEFAULT_CONFIG_FILE.read_text(encoding="utf-8")
    for section in Settings.model_fields:
        assert f"\n[{section}]\n" in text, f"[{section}] is not in {DEFAULT_CONFIG_FILE}"


def test_engine_and_rule_settings_load_and_override(tmp_path: Path) -> None:
    settings = load_settings(None, {})
    assert settings.models.bundle_dir.name == "engine"
    assert settings.rules.reload_interval_s == 1.0
    assert settings.scoring.rules_file == DEFAULT_CONFIG_FILE.parent / "rules.toml"
    moved = load_settings(None, {"FRAUDSTREAM__MODELS__BUNDLE_DIR": str(tmp_path / "e")})
    assert moved.models.bundle_dir == tmp_path / "e"
    path = write(tmp_path, "[rules]\nreload_interval_s = -1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert (info.value.key, info.value.line) == ("rules.reload_interval_s", 2)


def test_model_source_and_rollout_settings_load_and_are_checked(tmp_path: Path) -> None:
    settings = load_settings(None, {})
    assert settings.models.source == "bundle"
    assert settings.models.poll_interval_s == 10.0
    assert settings.models.rollout_file == DEFAULT_CONFIG_FILE.parent / "rollout.toml"
    assert settings.models.rollout_file.exists()
    moved = load_settings(
        None,
        {
            "FRAUDSTREAM__MODELS__SOURCE": "registry",
            "FRAUDSTREAM__MODELS__POLL_INTERVAL_S": "0.5",
            "FRAUDSTREAM__MODELS__ROLLOUT_FILE": str(tmp_path / "r.toml"),
        },
    )
    assert (moved.models.source, moved.models.poll_interval_s) == ("registry", 0.5)
    assert moved.models.rollout_file == tmp_path / "r.toml"
    path = write(tmp_path, "[models]\nsource = 'bundle'\nsource_x = 1\npoll_interval_s = 0\n")
    with pytest.raises(ConfigErrors) as info:
        load_settings(path, {})
    found = {(e.key, e.line) for e in info.value.errors}
    assert found == {("models.source_x", 3), ("models.poll_interval_s", 4)}
    with pytest.raises(ConfigError) as one:
        load_settings(None, {"FRAUDSTREAM__MODELS__SOURCE": "s3"})
    assert one.value.key == "models.source"


def test_redis_tls_settings_load_and_need_a_rediss_url(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[redis]\nurl = "rediss://r:6380/0"\nssl_ca_certs = "/ca.pem"\n'
        'ssl_certfile = "/c.pem"\nssl_keyfile = "/c.key"\nssl_check_hostname = false\n',
    )
    redis = load_settings(path, {}).redis
    assert (redis.ssl_ca_certs, redis.ssl_certfile, redis.ssl_keyfile) == (
        Path("/ca.pem"),
        Path("/c.pem"),
        Path("/c.key"),
    )
    assert redis.ssl_check_hostname is False
    assert load_settings(None, {}).redis.ssl_check_hostname is True  # verified by default
    plain = write(tmp_path, '[redis]\nurl = "redis://r:6379/0"\nssl_ca_certs = "/ca.pem"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(plain, {})
    assert info.value.key == "redis" and "rediss://" in info.value.reason
    assert info.value.line == 1


def test_a_layer_can_have_a_latency_budget_of_its_own(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[breaker]\nlatency_budget_ms = 20\nlayer_latency_budget_ms = { rules = 50 }\n"
    )
    settings = load_settings(path, {})
    assert settings.breaker.layer_latency_budget_ms == {"rules": 50.0}
    # The environment's table is merged into the file's: the shipped rule budget stays.
    env = {"FRAUDSTREAM__BREAKER__LAYER_LATENCY_BUDGET_MS": '{"gnn": 35}'}
    assert load_settings(None, env).breaker.layer_latency_budget_ms == {"rules": 50, "gnn": 35}


def test_a_budget_for_a_layer_that_does_not_exist_is_rejected_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[breaker]\nlayer_latency_budget_ms = { rulez = 50 }\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert info.value.key == "breaker.layer_latency_budget_ms.rulez"
    assert "'rules', 'xgboost', 'gnn' or 'iforest'" in info.value.reason
    assert info.value.line == 2  # the inline table's line
