"""One frozen, typed settings object, loaded once at the entry point and passed down.

Precedence, lowest first: defaults in code < ``config/fraudstream.toml`` (or the file
named by ``--config``) < environment variables ``FRAUDSTREAM__SECTION__KEY``.
Secrets are ``SecretStr`` so they never appear in reprs or logs.

A rejected value stops start-up with a ``ConfigError`` naming the source (file and
line, or environment variable), the key and the reason. This module is the only place
that looks at the process environment, and only through the mapping the entry point
hands it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from fraudstream.authorize.config import AuthorizeConfig
from fraudstream.errors import ConfigError, ConfigErrors
from fraudstream.reconcile.config import ReconcileConfig

ENV_PREFIX = "FRAUDSTREAM__"
ENV_NESTED_DELIMITER = "__"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config" / "fraudstream.toml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicSettings(_Section):
    transactions: str = "transactions"
    decisions: str = "decisions"
    decisions_shadow: str = "decisions.shadow"
    labels: str = "labels"
    authorizations: str = "authorizations"
    settlements: str = "settlements"
    reconciliation_exceptions: str = "reconciliation.exceptions"
    deadletter: str = "deadletter"


class KafkaSettings(_Section):
    bootstrap_servers: list[str] = Field(default_factory=lambda: ["127.0.0.1:19092"], min_length=1)
    client_id: str = "fraudstream"
    topics: TopicSettings = TopicSettings()
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=7)
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    # The largest record batch the worker produces to one partition: a scoring batch's
    # outputs for a partition go in one when they fit. Faust's default (16 KiB, ~16
    # decisions) cost a wait for the previous batch to go out every 16 outputs. Keep
    # it within the broker's message.max.bytes (1 MiB by default).
    producer_batch_bytes: int = Field(default=1_000_000, ge=16 * 1024, le=64 * 1024 * 1024)
    # Passed straight through to aiokafka / Faust. PLAINTEXT for the dev stack; use
    # SASL_SSL with SCRAM in production.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"sasl_mechanism is required with {self.security_protocol}")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("sasl_username and sasl_password are required with SASL")
        return self


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:16379/0"
    username: str | None = None
    password: SecretStr | None = None
    socket_timeout_ms: float = Field(default=50.0, gt=0)
    connect_timeout_ms: float = Field(default=200.0, gt=0)
    # TLS (a rediss:// url): the CA that signed the server's certificate (default: the
    # system's), a client certificate and key where the server asks for one (mutual
    # TLS), and whether the server's name must match its certificate.
    ssl_ca_certs: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _url_scheme(self) -> RedisSettings:
        if not re.match(r"^(redis|rediss|unix)://", self.url):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        tls_files = (self.ssl_ca_certs, self.ssl_certfile, self.ssl_keyfile)
        if any(f is not None for f in tls_files) and not self.url.startswith("rediss://"):
            raise ValueError("ssl_ca_certs, ssl_certfile and ssl_keyfile need a rediss:// url")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        return self


class MlflowSettings(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    registry_uri: str | None = None
    experiment: str = "fraudstream"
    model_name: str = "fraudstream-engine"


class ScoringSettings(_Section):
    review_threshold: float = Field(default=0.30, ge=0.0, le=1.0)
    decline_threshold: float = Field(default=0.80, ge=0.0, le=1.0)
    # Thresholds used while a layer is skipped by its breaker: the fallback ensemble is
    # less sure of itself, so ops usually route more to review.
    fallback_review_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    fallback_decline_threshold: float = Field(default=0.90, ge=0.0, le=1.0)
    max_batch_size: int = Field(default=256, ge=1, le=100_000)
    batch_window_ms: float = Field(default=5.0, gt=0)
    # Hard per-decision deadline; past it the default action is emitted instead.
    deadline_ms: float = Field(default=100.0, gt=0)
    default_action: Literal["approve", "review", "decline"] = "review"
    rules_file: Path = PROJECT_ROOT / "config" / "rules.toml"

    @model_validator(mode="after")
    def _ordered(self) -> ScoringSettings:
        if self.review_threshold > self.decline_threshold:
            raise ValueError("review_threshold must not exceed decline_threshold")
        if self.fallback_review_threshold > self.fallback_decline_threshold:
            raise ValueError("fallback_review_threshold must not exceed fallback_decline_threshold")
        return self


LayerName = Literal["rules", "xgboost", "gnn", "iforest"]


def _shipped_layer_budgets() -> dict[LayerName, float]:
    return {"rules": 50.0}


class BreakerSettings(_Section):
    failure_threshold: int = Field(default=3, ge=1)
    reset_timeout_s: float = Field(default=5.0, gt=0)
    latency_budget_ms: float = Field(default=20.0, gt=0)
    # Per layer, over latency_budget_ms (a table in a file replaces this one; the
    # environment's is merged into the file's). A worker sharing its cores runs a
    # layer several times slower than alone, and the rule layer (the ops' allow/deny
    # lists) is the one that must not be skipped for being slow: at 20 ms its breaker
    # opened in 2 of 5 paced runs at 1,300/s on 2 cores (73-117 batches, up to half the
    # decisions degraded), at 50 ms in none of 5. The batch's deadline still bounds it.
    layer_latency_budget_ms: dict[LayerName, Annotated[float, Field(gt=0)]] = Field(
        default_factory=_shipped_layer_budgets
    )
    half_open_probes: int = Field(default=1, ge=1)


class WorkerSettings(_Section):
    app_id: str = "fraudstream"
    web_port: int = Field(default=6066, ge=1, le=65535)
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Faust keeps table state here; changelog topics make it survive a lost disk.
    data_dir: Path = PROJECT_ROOT / ".devstack" / "faust"
    # Run continuous reconciliation (authorizations x settlements) in this worker too.
    reconcile: bool = True
    # How long the labels and reconciliation agents wait to fill a batch. Faust's
    # take_events wakes every window even with nothing to read, so with the scoring
    # window (5 ms) these two agents alone kept an idle worker busier: 8.0 % of a core
    # instead of 5.8 % (measured). Labels and settlements arrive days after the
    # payment: a quarter of a second changes nothing for them. (The scoring agent's own
    # batcher sleeps until an event arrives: an idle worker now uses ~1 % of a core.)
    background_batch_window_ms: float = Field(default=250.0, gt=0, le=60_000)
    # Decide in a child process of the worker's own (streams.decider_process): the
    # engines, the registry watcher and the GNN there, Kafka here. On a busy worker the
    # decision thread otherwise shares the interpreter lock with Faust's event loop:
    # measured at 1,200-1,600 decisions/s on 2 cores, in-process left up to 89 % of
    # decisions degraded and up to a third deadline defaults; in a child, none.
    decider_process: bool = True
    # A child that leaves a batch unanswered this long is killed and replaced.
    decider_stall_s: float = Field(default=10.0, gt=0, le=3600)
    # How long a child may take to load its engine (at start and when replaced).
    decider_start_timeout_s: float = Field(default=300.0, gt=0, le=3600)


class DevstackSettings(_Section):
    home: Path = PROJECT_ROOT / ".devstack"
    host: str = "127.0.0.1"
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=19093, ge=1, le=65535)
    redis_port: int = Field(default=16379, ge=1, le=65535)
    kafka_heap: str = "512m"
    start_timeout_s: float = Field(default=90.0, gt=0)


class FeatureSettings(_Section):
    # Keys are "<prefix>:<entity>:<id>..."; one prefix per engine sharing a Redis.
    key_prefix: str = Field(default="fs", pattern=r"^[A-Za-z0-9_.\-]+$")
    # Events up to this much older than the newest one seen for the same card/terminal
    # still get exact features; older ones get what is retained and are counted.
    allowed_lateness_s: float = Field(default=300.0, ge=0, le=7 * 86_400)
    # A compute slower than this raises FeatureStoreTimeout (the breaker counts it).
    timeout_ms: float = Field(default=50.0, gt=0)
    # Where applied labels are appended for training to read (Parquet files).
    label_store_dir: Path = PROJECT_ROOT / ".devstack" / "labels"


class ModelSettings(_Section):
    # Where the worker's engine comes from: "bundle" (the directory below) or "registry"
    # (the MLflow registry of [mlflow]: the version behind the `champion` alias, and the
    # `challenger` one in shadow / canary, both followed while running).
    source: Literal["bundle", "registry"] = "bundle"
    # The trained engine the worker loads (a directory written by `fraudstream train` or
    # `fraudstream demo`: the ensemble, every layer and engine.json, under one manifest).
    bundle_dir: Path = PROJECT_ROOT / ".devstack" / "engine"
    # How often the registry's champion/challenger aliases are checked (source=registry).
    poll_interval_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    # Registry versions are downloaded (digest-checked) under this directory.
    download_dir: Path = PROJECT_ROOT / ".devstack" / "models"
    # The ops file with the canary share and the shadow switch, re-read when it changes.
    rollout_file: Path = PROJECT_ROOT / "config" / "rollout.toml"
    rollout_reload_interval_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    # How often the worker checks whether the GNN embeddings are due for a refresh (the
    # refresh period itself is the model's, in event time); 0 turns the refresh off.
    gnn_refresh_check_s: float = Field(default=60.0, ge=0.0, le=86400.0)
    # Run the refresh's encoder in a child process (models/gnn/refresh_process.py): in
    # the worker it held the decisions up for ~1 s under load, every refresh period.
    # False runs it in the worker (one process less, ~0.5 GB less memory with torch).
    gnn_refresh_in_child: bool = True


class RuleSettings(_Section):
    # The rule file itself is scoring.rules_file.
    # How often the rule file is re-read for changes (hot reload, no restart).
    reload_interval_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    # The rule layer's own score for a row on which only review rules fire.
    review_score: float = Field(default=0.7, ge=0.0, le=1.0)
    # Redis key prefix of the allow/deny lists ("<prefix>:<column>" sets).
    list_prefix: str = Field(default="fraudstream:list", pattern=r"^[A-Za-z0-9_.:\-]+$")


class DedupeSettings(_Section):
    # Remember each decision by transaction id (a changelog-backed table) so a
    # redelivered transaction gets the same decision re-emitted, never a second one.
    enabled: bool = True
    # How long after a decision a redelivery is still recognised. Memory is about
    # (decisions per second) x retention_s x ~1 KiB per worker.
    retention_s: float = Field(default=3600.0, gt=0)


class SecuritySettings(_Section):
    # Keyed-HMAC key that turns a card number into its token at ingress (>= 16 bytes;
    # from your secret store: FRAUDSTREAM__SECURITY__PAN_TOKEN_KEY, never in the file).
    # Unset: a message carrying a card number is refused (dead-lettered, the number
    # replaced by a token under a key that lives only as long as the process).
    pan_token_key: SecretStr | None = None

    @model_validator(mode="after")
    def _long_enough(self) -> SecuritySettings:
        key = self.pan_token_key
        if key is not None and len(key.get_secret_value().encode()) < 16:
            raise ValueError("pan_token_key must be at least 16 bytes")
        return self


class DataSettings(_Section):
    handbook_path: Path = (
        PROJECT_ROOT.parent / "shared" / "data" / "handbook" / "transactions.parquet"
    )


class Settings(BaseSettings):
    """Everything fraudstream can be told. Frozen: build a new one to change it."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    mlflow: MlflowSettings = MlflowSettings()
    scoring: ScoringSettings = ScoringSettings()
    breaker: BreakerSettings = BreakerSettings()
    worker: WorkerSettings = WorkerSettings()
    devstack: DevstackSettings = DevstackSettings()
    features: FeatureSettings = FeatureSettings()
    models: ModelSettings = ModelSettings()
    rules: RuleSettings = RuleSettings()
    data: DataSettings = DataSettings()
    security: SecuritySettings = SecuritySettings()
    dedupe: DedupeSettings = DedupeSettings()
    # Owned by their packages (pure pydantic models), configured here like the rest.
    reconciliation: ReconcileConfig = ReconcileConfig()
    authorize: AuthorizeConfig = AuthorizeConfig()


class _MappingEnvSource(EnvSettingsSource):
    """Reads the mapping the entry point passed, never the process environment."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given_env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._given_env.items()}


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "-", f"cannot read file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "-", f"not UTF-8 text: {exc.reason}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise ConfigError(str(path), "-", f"invalid TOML: {exc}", line) from exc


def locate_key(text: str, dotted: str) -> int | None:
    """1-based line of ``dotted`` (``section.sub.key``) in TOML ``text``, if written there."""
    *tables, _key = dotted.split(".")
    want_table = ".".join(tables)
    current = ""
    table_line: int | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[([^\[\]]+)\]", line)
        if header:
            current = header.group(1).strip()
            if current == dotted:  # the key names a whole table, e.g. a section check
                return number
            if current == want_table:
                table_line = number
            continue
        assignment = re.match(r"^([A-Za-z0-9_.\-\"]+)\s*=", line)
        if assignment:
            name = assignment.group(1).replace('"', "")
            full = f"{current}.{name}" if current else name
            if full == dotted:
                return number
    return table_line


def _written_at(text: str, loc: tuple[str, ...]) -> int | None:
    """The line of ``loc``, or of the nearest part of it written as a line of its own (a
    key inside an inline table ``{ ... }`` is on its table's line)."""
    for depth in range(len(loc), 0, -1):
        line = locate_key(text, ".".join(loc[:depth]))
        if line is not None:
            return line
    return None


def _env_name_for(loc: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """The environment variable that set ``loc`` (or a parent of it), if any."""
    upper = {k.upper(): k for k in env}
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.upper() for p in loc[:depth])
        if name in upper:
            return upper[name]
    # A whole-section check (e.g. SASL needs credentials) failed: name the variables
    # that fed that section.
    section = ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.upper() for p in loc) + ENV_NESTED_DELIMITER
    fed = sorted(original for name, original in upper.items() if name.startswith(section))
    return ", ".join(fed) if fed else None


def load_settings(
    config_file: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from ``config_file`` (default ``config/fraudstream.toml``) and
    ``env`` (the entry point passes ``os.environ``; tests pass a dict).

    A missing default file is fine (code defaults apply); a named file must exist.
    """
    ours = {k: v for k, v in (env or {}).items() if k.upper().startswith(ENV_PREFIX)}
    path = config_file if config_file is not None else DEFAULT_CONFIG_FILE
    if config_file is None and not path.exists():
        file_data: dict[str, Any] = {}
        text = ""
    else:
        file_data = _read_toml(path)
        text = path.read_text(encoding="utf-8")

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (_MappingEnvSource(settings_cls, ours), _DictSource(settings_cls, file_data))

    try:
        loaded = _Loaded()
    except ValidationError as exc:
        raise _explain(exc, path, text, ours) from None
    # Hand back the plain class so callers never see the loader's subclass.
    return Settings.model_construct(
        **{name: getattr(loaded, name) for name in Settings.model_fields}
    )


def _explain(exc: ValidationError, path: Path, text: str, env: Mapping[str, str]) -> ConfigError:
    problems: list[ConfigError] = []
    for error in exc.errors():
        # pydantic marks a bad dict key with a trailing "[key]": the key itself is named.
        loc = tuple(str(p) for p in error["loc"] if p != "[key]")
        key = ".".join(loc) if loc else "-"
        reason = error["msg"]
        env_name = _env_name_for(loc, env) if loc else None
        if env_name is not None:
            problems.append(ConfigError(f"environment variable {env_name}", key, reason))
        else:
            line = _written_at(text, loc) if text and loc else None
            source = str(path) if text else "built-in defaults"
            problems.append(ConfigError(source, key, reason, line))
    return problems[0] if len(problems) == 1 else ConfigErrors(problems)
