"""``fraudstream worker``: build the app from settings and run it until stopped.

The worker scores with a trained engine (refusing to start without one, or with one
trained on other feature definitions), features from the Redis store (transaction-only
features while it is down), the hot-reloaded rule file with its Redis allow/deny lists,
and applies the labels topic to the feature store.

Where the engine comes from is ``models.source``: ``bundle`` loads ``models.bundle_dir``
once; ``registry`` loads the MLflow registry's ``champion`` at start and follows both
aliases while running (:mod:`streams.hotswap`: a moved alias is downloaded and loaded in
a thread every ``models.poll_interval_s`` and swapped in between batches). A
``challenger`` scores in shadow and decides the canary share of ``models.rollout_file``
(:mod:`streams.routing`, :mod:`streams.rollout`); its decisions that do not act go to
``kafka.topics.decisions_shadow``.

All of that deciding happens in a child process of the worker's own when
``worker.decider_process`` is on (the default; :mod:`streams.decider_process`): the
worker keeps Kafka, dedupe, the labels agent and the deadline.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from features.label_store import LabelStore
from features.online import RedisFeatureStore, redis_client_for
from features.table import transaction_only
from fraudstream.metrics import (
    EngineMetrics,
    PrometheusEngineHooks,
    PrometheusReconcileHooks,
    PrometheusStreamHooks,
    timed,
)
from fraudstream.settings import Settings
from fraudstream.wire.pan import CardNumberIngress
from fraudstream.wire.schemas import LabelEvent, Transaction
from models.decide import BatchFeatures
from models.gnn.refresh_process import ChildProcessEmbeddings
from streams.agents import register_labels_agent, register_scoring_agent
from streams.app import create_app, declare_topics
from streams.decider_child import Build, build_real
from streams.decider_process import DeciderProcess
from streams.dedupe import DedupeConfig
from streams.engine_loading import (
    RolloutLog,
    engine_builder,
    open_registry,
    registry_models,
    score_reference,
)
from streams.gnn_refresh import GnnRefresh
from streams.hotswap import ModelSet, RegistryWatcher
from streams.reconcile import ReconcileHooks, register_reconcile_agent
from streams.rollout import FixedRollout, RolloutFile
from streams.routing import RoutedDecider
from streams.scoring import BatchDecider, StreamHooks
from streams.topics import ensure_topics
from training.bundle import EngineInfo
from training.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringParts:
    """What the agents need, built from settings; the tests build it with fakes."""

    decider: BatchDecider  # a RoutedDecider, or a DeciderProcess holding one in a child
    apply_labels: Any  # (labels) -> int: the feature store's apply_labels
    info: EngineInfo  # the engine in force at start
    watcher: RegistryWatcher | None = None  # models.source = "registry"
    source: str = ""  # where the engine in force at start came from
    gnn: GnnRefresh | None = None  # keeps the engines' GNN embeddings fresh
    child: DeciderProcess | None = None  # the decider's child process, if it has one

    def close(self) -> None:
        """Stop the processes these parts started (the GNN refresh, the decider's
        child): the interpreter's exit would otherwise wait for them."""
        if self.gnn is not None:
            self.gnn.close()
        if self.child is not None:
            self.child.close()


def redis_client(settings: Settings) -> Any:
    extra: dict[str, Any] = {}
    if settings.redis.username:
        extra["username"] = settings.redis.username
    if settings.redis.password is not None:
        extra["password"] = settings.redis.password.get_secret_value()
    tls = settings.redis
    if tls.url.startswith("rediss://"):  # a plain connection takes no TLS arguments
        files = {
            "ssl_ca_certs": tls.ssl_ca_certs,
            "ssl_certfile": tls.ssl_certfile,
            "ssl_keyfile": tls.ssl_keyfile,
        }
        extra.update({name: str(path) for name, path in files.items() if path is not None})
        extra["ssl_cert_reqs"] = "required"
        extra["ssl_check_hostname"] = tls.ssl_check_hostname
    return redis_client_for(
        settings.redis.url,
        timeout_ms=settings.redis.socket_timeout_ms,
        connect_timeout_ms=settings.redis.connect_timeout_ms,
        **extra,
    )


def card_number_ingress(settings: Settings) -> CardNumberIngress:
    key = settings.security.pan_token_key
    return CardNumberIngress.from_key(
        key.get_secret_value().encode() if key else None,
        known_fields=Transaction.__struct_fields__,
    )


def build_scoring(
    settings: Settings,
    stream_hooks: StreamHooks,
    engine_hooks: PrometheusEngineHooks | None = None,
    *,
    registry: ModelRegistry | None = None,
) -> ScoringParts:
    """Load the engine (``models.source``) and connect it to Redis (nothing is contacted
    yet: a store that is down only degrades decisions). ``registry`` replaces the MLflow
    registry of the settings (tests pass the in-memory twin)."""
    client = redis_client(settings)
    store = feature_store(settings, client)
    build = engine_builder(settings, client, engine_hooks)
    report = RolloutLog()
    watcher: RegistryWatcher | None = None
    rollout: FixedRollout | RolloutFile = FixedRollout()
    if settings.models.source == "registry":
        # The rollout file first: a bad one stops start-up before any download.
        rollout = RolloutFile(
            settings.models.rollout_file,
            reload_interval_s=settings.models.rollout_reload_interval_s,
            on_reload=report.rollout_reloaded,
            on_error=report.rollout_rejected,
        )
        models, watcher = registry_models(
            settings, registry if registry is not None else open_registry(settings), build, report
        )
    else:
        models = ModelSet(build(settings.models.bundle_dir, None))
    child = (
        ChildProcessEmbeddings(scratch=settings.worker.data_dir / "gnn-refresh")
        if settings.models.gnn_refresh_in_child
        else None
    )
    gnn = GnnRefresh(
        lambda: [m.engine for m in (models.champion, models.challenger) if m], child=child
    )

    lookup = timed(store.compute, engine_hooks.feature_lookup) if engine_hooks else store.compute

    def compute(transactions: Sequence[Transaction]) -> Any:
        gnn.observe(transactions)  # the graph moves on even while Redis is down
        return lookup(transactions)

    apply_labels = label_applier(settings, store, gnn.observe_labels)
    features = BatchFeatures(
        compute,
        transaction_only,
        engine_hooks.feature_store_error if engine_hooks else None,
    )
    decider = RoutedDecider(
        models,
        features,
        rollout,
        settings.scoring,
        timeout_s=settings.scoring.deadline_ms / 1000.0,
        hooks=report,
        on_error=stream_hooks.pipeline_failed,
    )
    champion = models.champion
    assert champion.info is not None
    return ScoringParts(decider, apply_labels, champion.info, watcher, champion.source, gnn)


def feature_store(settings: Settings, client: Any) -> RedisFeatureStore:
    return RedisFeatureStore(
        client,
        key_prefix=settings.features.key_prefix,
        allowed_lateness_ms=round(settings.features.allowed_lateness_s * 1000),
        timeout_ms=settings.features.timeout_ms,
    )


def label_applier(
    settings: Settings,
    store: RedisFeatureStore,
    observe_labels: Callable[[Sequence[LabelEvent]], None],
) -> Callable[[Sequence[LabelEvent]], int]:
    label_store = LabelStore(settings.features.label_store_dir)  # a file per process

    def apply_labels(labels: Sequence[LabelEvent]) -> int:
        # Kept for training first, then applied to the online risk features; both before
        # the labels' offsets are acknowledged (a crash repeats, never loses, a label).
        label_store.append(labels)
        applied = store.apply_labels(labels)
        observe_labels(labels)  # the GNN's graph (in the decider's child, if there is one)
        return applied

    return apply_labels


def build_scoring_in_child(
    settings: Settings,
    stream_hooks: StreamHooks,
    engine_hooks: PrometheusEngineHooks | None = None,
    *,
    build: Build = build_real,
) -> ScoringParts:
    """``worker.decider_process``: the decider (engines, registry watcher, GNN) in a
    child process (:mod:`streams.decider_process`); labels are applied here and
    forwarded to it. Waits until the child's engine is loaded, and raises its error."""
    decider = DeciderProcess(settings, stream_hooks, engine_hooks, build=build)
    store = feature_store(settings, redis_client(settings))
    apply_labels = label_applier(settings, store, decider.observe_labels)
    return ScoringParts(decider, apply_labels, decider.info, None, decider.source, child=decider)


def build_worker_app(
    settings: Settings,
    metrics: EngineMetrics,
    parts: ScoringParts | None = None,
    reconcile_hooks: ReconcileHooks | None = None,
) -> faust.App:
    if parts is None:
        parts = build_scoring(
            settings, PrometheusStreamHooks(metrics), PrometheusEngineHooks(metrics)
        )
    stream_hooks = PrometheusStreamHooks(metrics, reference=score_reference(parts.info))
    info = parts.info
    app = create_app(settings)
    topics = declare_topics(app, settings)
    max_batch = settings.scoring.max_batch_size
    window_s = settings.scoring.batch_window_ms / 1000.0
    background_window_s = settings.worker.background_batch_window_ms / 1000.0
    max_bytes = settings.kafka.max_message_bytes
    shadow_topic = app.topic(
        settings.kafka.topics.decisions_shadow,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.kafka.partitions,
    )
    register_scoring_agent(
        app,
        topics,
        parts.decider,
        stream_hooks,
        max_batch=max_batch,
        batch_window_s=window_s,
        max_message_bytes=max_bytes,
        shadow_topic=shadow_topic,
        dedupe=DedupeConfig(**settings.dedupe.model_dump()),
        ingress=card_number_ingress(settings),
    )
    watcher = parts.watcher
    if watcher is not None:

        async def poll_registry() -> None:
            await asyncio.to_thread(watcher.poll)  # downloads and loads off the event loop

        app.timer(settings.models.poll_interval_s, name="model-registry")(poll_registry)
    gnn = parts.gnn
    if gnn is not None and settings.models.gnn_refresh_check_s > 0:

        async def refresh_embeddings() -> None:
            await asyncio.to_thread(gnn.refresh_due)  # the encoder runs off the event loop

        app.timer(settings.models.gnn_refresh_check_s, name="gnn-refresh")(refresh_embeddings)
    register_labels_agent(
        app,
        topics,
        parts.apply_labels,
        stream_hooks,
        max_batch=max_batch,
        batch_window_s=background_window_s,
        max_message_bytes=max_bytes,
    )
    if settings.worker.reconcile:
        register_reconcile_agent(
            app,
            settings.kafka.topics,
            settings.reconciliation,
            reconcile_hooks if reconcile_hooks is not None else PrometheusReconcileHooks(metrics),
            partitions=settings.kafka.partitions,
            max_batch=max_batch,
            batch_window_s=background_window_s,
            max_message_bytes=max_bytes,
        )

    async def announce() -> None:
        log.info(
            "scoring with engine %s from %s (feature definitions %s)%s",
            info.version,
            parts.source,
            info.definitions_hash,
            f", deciding in child process {parts.child.pid}" if parts.child else "",
        )

    app.task(announce)
    return app


def freeze_startup_objects() -> int:
    """Move everything alive after start-up (the imported libraries, the loaded engine)
    out of the garbage collector's reach; returns how many objects that is.

    Why: a full collection walks every tracked object, and torch, polars, pandas and
    Faust leave ~300,000 of them. Measured on the benchmark worker, each full collection
    stopped the event loop and the decision thread for 130-250 ms, several times a
    minute, which was the decisions' latency tail (p99 357 ms at half the peak rate).
    Frozen, the same collections take 7-38 ms (p99 168 ms in the same run). The cost:
    frozen objects are freed by reference counting only, so if the engine loaded at
    start-up is later swapped out, whatever reference cycles it holds stay until exit
    (one engine's memory at most, once: engines loaded later are not frozen)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run_worker(settings: Settings) -> None:
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = EngineMetrics()
    # Loaded first: a missing or mismatched engine stops start-up before anything runs.
    build = build_scoring_in_child if settings.worker.decider_process else build_scoring
    parts = build(settings, PrometheusStreamHooks(metrics), PrometheusEngineHooks(metrics))
    asyncio.run(ensure_topics(settings.kafka))
    if settings.worker.metrics_port:
        metrics.serve(settings.worker.metrics_port)
    app = build_worker_app(settings, metrics, parts)
    if parts.gnn is not None:
        # Before the freeze: what it imports (torch, when the refresh runs in the
        # worker) are start-up objects too. A child process imports it on its own.
        parts.gnn.warm_up()
    freeze_startup_objects()
    worker = faust.Worker(app, loglevel=settings.worker.log_level.lower(), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        parts.close()
