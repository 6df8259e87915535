"""``fraudstream worker``: build the app from settings and run it until stopped.

The worker scores with the trained engine at ``models.bundle_dir`` (refusing to start
without one, or with one trained on other feature definitions), features from the Redis
store (transaction-only features while it is down), the hot-reloaded rule file with its
Redis allow/deny lists, and applies the labels topic to the feature store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import faust

from features.definitions import FEATURE_NAMES
from features.online import RedisFeatureStore, redis_client_for
from features.table import transaction_only
from fraudstream.errors import RuleFileError
from fraudstream.metrics import EngineMetrics, PrometheusEngineHooks, PrometheusStreamHooks
from fraudstream.settings import Settings
from fraudstream.wire import Decision, Transaction
from models.decide import ENGINE_ERROR_REASON, EnginePipeline, ScoringEngine, default_decisions
from models.rules import RuleBook, RuleSet, RulesScorer, RulesSettings
from models.rules.lists import RedisListStore
from streams.agents import register_labels_agent, register_scoring_agent
from streams.app import create_app, declare_topics
from streams.reconcile import LatestTotals, ReconcileHooks, register_reconcile_agent
from streams.scoring import DeadlineDecider, StreamHooks
from streams.topics import ensure_topics
from training.bundle import EngineInfo, load_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringParts:
    """What the agents need, built from settings; the tests build it with fakes."""

    decider: DeadlineDecider
    apply_labels: Any  # (labels) -> int: the feature store's apply_labels
    info: EngineInfo


def redis_client(settings: Settings) -> Any:
    extra: dict[str, Any] = {}
    if settings.redis.username:
        extra["username"] = settings.redis.username
    if settings.redis.password is not None:
        extra["password"] = settings.redis.password.get_secret_value()
    if settings.redis.ssl_ca_certs is not None:
        extra["ssl_ca_certs"] = str(settings.redis.ssl_ca_certs)
    return redis_client_for(
        settings.redis.url,
        timeout_ms=settings.redis.socket_timeout_ms,
        connect_timeout_ms=settings.redis.connect_timeout_ms,
        **extra,
    )


def rule_layer(settings: Settings, lists: Any) -> RulesScorer:
    """The ops rule file, re-read every ``rules.reload_interval_s``, with Redis lists."""

    def reloaded(rules: RuleSet) -> None:
        log.info("rules reloaded from %s: version %s", settings.scoring.rules_file, rules.version)

    def rejected(error: RuleFileError) -> None:
        log.error("rule file rejected, the last good rules keep running: %s", error)

    book = RuleBook(
        settings.scoring.rules_file,
        features=FEATURE_NAMES,
        reload_interval_s=settings.rules.reload_interval_s,
        on_reload=reloaded,
        on_error=rejected,
    )
    options = RulesSettings(
        reload_interval_s=settings.rules.reload_interval_s,
        review_score=settings.rules.review_score,
        list_prefix=settings.rules.list_prefix,
    )
    return RulesScorer(book, lists, options)


def fallback_for(settings: Settings, engine: ScoringEngine) -> Any:
    """The decisions emitted when the engine misses the deadline (or raises)."""

    def fallback(
        transactions: Sequence[Transaction], now: datetime, timed_out: bool
    ) -> list[Decision]:
        if timed_out:
            return default_decisions(
                transactions, settings.scoring, now, model_version=engine.model_version
            )
        return default_decisions(
            transactions,
            settings.scoring,
            now,
            reason=ENGINE_ERROR_REASON,
            timeout_default=False,
            model_version=engine.model_version,
        )

    return fallback


def build_scoring(
    settings: Settings,
    stream_hooks: StreamHooks,
    engine_hooks: PrometheusEngineHooks | None = None,
) -> ScoringParts:
    """Load the engine bundle and connect it to Redis (nothing is contacted yet: a store
    that is down only degrades decisions)."""
    trained = load_bundle(settings.models.bundle_dir)
    client = redis_client(settings)
    store = RedisFeatureStore(
        client,
        key_prefix=settings.features.key_prefix,
        allowed_lateness_ms=round(settings.features.allowed_lateness_s * 1000),
        timeout_ms=settings.features.timeout_ms,
    )
    hooks: dict[str, Any] = {}
    if engine_hooks is not None:
        hooks = {
            "on_layer_result": engine_hooks.layer_result,
            "on_breaker_change": engine_hooks.breaker_changed,
            "on_engine_error": engine_hooks.engine_error,
        }
    engine = ScoringEngine.from_ensemble(
        trained.ensemble,
        scoring=settings.scoring,
        breaker=settings.breaker,
        rules=rule_layer(settings, RedisListStore(client, prefix=settings.rules.list_prefix)),
        **hooks,
    )
    pipeline = EnginePipeline(
        engine,
        store.compute,
        transaction_only,
        on_feature_store_error=engine_hooks.feature_store_error if engine_hooks else None,
    )
    decider = DeadlineDecider(
        pipeline,
        timeout_s=settings.scoring.deadline_ms / 1000.0,
        fallback=fallback_for(settings, engine),
        on_error=stream_hooks.pipeline_failed,
    )
    return ScoringParts(decider, store.apply_labels, trained.info)


def build_worker_app(
    settings: Settings,
    metrics: EngineMetrics,
    parts: ScoringParts | None = None,
    reconcile_hooks: ReconcileHooks | None = None,
) -> faust.App:
    stream_hooks = PrometheusStreamHooks(metrics)
    if parts is None:
        parts = build_scoring(settings, stream_hooks, PrometheusEngineHooks(metrics))
    info = parts.info
    app = create_app(settings)
    topics = declare_topics(app, settings)
    max_batch = settings.scoring.max_batch_size
    window_s = settings.scoring.batch_window_ms / 1000.0
    max_bytes = settings.kafka.max_message_bytes
    register_scoring_agent(
        app,
        topics,
        parts.decider,
        stream_hooks,
        max_batch=max_batch,
        batch_window_s=window_s,
        max_message_bytes=max_bytes,
    )
    register_labels_agent(
        app,
        topics,
        parts.apply_labels,
        stream_hooks,
        max_batch=max_batch,
        batch_window_s=window_s,
        max_message_bytes=max_bytes,
    )
    if settings.worker.reconcile:
        register_reconcile_agent(
            app,
            settings.kafka.topics,
            settings.reconciliation,
            reconcile_hooks if reconcile_hooks is not None else LatestTotals(),
            partitions=settings.kafka.partitions,
            max_batch=max_batch,
            batch_window_s=window_s,
            max_message_bytes=max_bytes,
        )

    async def announce() -> None:
        log.info(
            "scoring with engine %s from %s (feature definitions %s)",
            info.version,
            settings.models.bundle_dir,
            info.definitions_hash,
        )

    app.task(announce)
    return app


def run_worker(settings: Settings) -> None:
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = EngineMetrics()
    # Loaded first: a missing or mismatched engine stops start-up before anything runs.
    parts = build_scoring(settings, PrometheusStreamHooks(metrics), PrometheusEngineHooks(metrics))
    asyncio.run(ensure_topics(settings.kafka))
    if settings.worker.metrics_port:
        metrics.serve(settings.worker.metrics_port)
    app = build_worker_app(settings, metrics, parts)
    worker = faust.Worker(app, loglevel=settings.worker.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
