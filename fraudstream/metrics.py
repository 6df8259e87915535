"""Every Prometheus metric fraudstream exports, declared in one place.

Scoring and feature code never import prometheus_client: they report through hook
objects, and the implementations here turn those reports into metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fraudstream.drift import ReferenceHistogram, ScoreWindow
from fraudstream.errors import ReportedError
from streams.scoring import BatchOutcome, LabelOutcome

if TYPE_CHECKING:
    from fraudstream.wire import Decision
    from models.decide import LayerReport
    from streams.reconcile import ReconcileOutcome

T = TypeVar("T")
R = TypeVar("R")

# Breaker state as a number, for alerting: 0 closed, 1 half-open, 2 open.
BREAKER_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class EngineMetrics:
    """The metric families, registered on one registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "fraudstream_decisions", "Decisions produced, by outcome.", ["outcome"], registry=r
        )
        self.deadletters = Counter(
            "fraudstream_deadletters",
            "Input messages sent to the dead-letter topic, by kind of defect.",
            ["kind"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "fraudstream_batch_seconds",
            "Time to decode, score and produce one micro-batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "fraudstream_batch_size",
            "Messages per micro-batch.",
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )

        self.degraded = Counter(
            "fraudstream_degraded_decisions",
            "Decisions made without every layer or without the feature store.",
            registry=r,
        )
        self.timeout_defaults = Counter(
            "fraudstream_timeout_defaults",
            "Configured default decisions emitted because the deadline passed.",
            registry=r,
        )
        self.decider_restarts = Counter(
            "fraudstream_decider_restarts",
            "Decider child processes replaced (worker.decider_process), by reason: died "
            "(it exited) or stalled (it answered nothing for worker.decider_stall_s).",
            ["reason"],
            registry=r,
        )
        self.decider_late_batches = Counter(
            "fraudstream_decider_late_batches",
            "Batches the worker stopped waiting for: its decider child had not answered "
            "within the deadline and its grace, so the worker emitted the deadline's "
            "defaults itself (the child's own deadline defaults are not counted here).",
            registry=r,
        )
        self.pipeline_errors = Counter(
            "fraudstream_pipeline_errors",
            "Batches whose scoring raised; the configured default was emitted.",
            registry=r,
        )
        self.layer_results = Counter(
            "fraudstream_layer_results",
            "Scoring layer runs, by layer and status (ok, slow, error, skipped, deadline).",
            ["layer", "status"],
            registry=r,
        )
        self.layer_seconds = Histogram(
            "fraudstream_layer_seconds",
            "Time one scoring layer took on one micro-batch.",
            ["layer"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.breaker_state = Gauge(
            "fraudstream_breaker_state",
            "Circuit breaker state per layer: 0 closed, 1 half-open, 2 open.",
            ["layer"],
            registry=r,
        )
        self.feature_store_errors = Counter(
            "fraudstream_feature_store_errors",
            "Feature lookups that failed (transaction-only features were used), by error.",
            ["error"],
            registry=r,
        )
        self.labels = Counter(
            "fraudstream_labels",
            "Labels read from the labels topic, by result (applied, unchanged).",
            ["result"],
            registry=r,
        )
        self._declare_decision_metrics(r)
        self._declare_reconcile_metrics(r)
        # Layers whose breaker state is exported: the others show as closed once they run.
        self.breakers_seen: set[str] = set()

    def _declare_decision_metrics(self, r: CollectorRegistry) -> None:
        self.decision_latency = Histogram(
            "fraudstream_decision_latency_seconds",
            "End to end: from the transaction's event time to its decision acknowledged "
            "by the broker.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.feature_store_seconds = Histogram(
            "fraudstream_feature_store_seconds",
            "Time of one feature store lookup (one micro-batch), by result (ok, error).",
            ["result"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.model_info = Gauge(
            "fraudstream_model_info",
            "The model version deciding now (value 1; one series per version seen last).",
            ["version"],
            registry=r,
        )
        self.dedupe_hits = Counter(
            "fraudstream_dedupe_hits",
            "Redelivered transactions answered with their remembered decision, not rescored.",
            registry=r,
        )
        self.dedupe_remembered = Gauge(
            "fraudstream_dedupe_remembered",
            "Decisions remembered for deduplication on this worker's partitions.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "fraudstream_consumer_lag",
            "Messages not yet committed, per input partition (high water - committed).",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_rewinds = Gauge(
            "fraudstream_consumer_rewinds",
            "Times this worker read a partition again from a message Faust skipped "
            "(streams.commit_guard), since start.",
            registry=r,
        )
        self.consumer_uncounted_acks = Gauge(
            "fraudstream_consumer_uncounted_acks",
            "Acknowledgements of messages skipped around rebalances, not committed "
            "(streams.commit_guard), since start.",
            registry=r,
        )
        self.ingress_rewritten = Gauge(
            "fraudstream_ingress_rewritten",
            "Messages with a field holding a number that passes the card-number check, "
            "replaced by its token at ingress, since start: an identifier rewritten so is "
            "carried as the token by its decision (card_number itself counts only when "
            "no tokenization key is configured and the message is refused).",
            ["field"],
            registry=r,
        )
        self.score_psi = Gauge(
            "fraudstream_score_psi",
            "Population stability index of the recent scores against the training scores.",
            registry=r,
        )
        self.score_window = Gauge(
            "fraudstream_score_window",
            "Scores in the sliding window the drift index is computed on.",
            registry=r,
        )

    def _declare_reconcile_metrics(self, r: CollectorRegistry) -> None:
        self.reconcile_messages = Counter(
            "fraudstream_reconcile_messages",
            "Authorisation and settlement messages read by the reconciliation agent.",
            registry=r,
        )
        self.reconcile_exceptions = Counter(
            "fraudstream_reconcile_exceptions",
            "Reconciliation exceptions reported, by kind.",
            ["kind"],
            registry=r,
        )
        self.reconcile_state = Gauge(
            "fraudstream_reconcile_state",
            "Reconciliation totals per partition, from its durable state (authorizations, "
            "settlements, redelivered, matched, opened, closed, open, evicted).",
            ["partition", "count"],
            registry=r,
        )
        self.reconcile_exceptions_by_partition = Gauge(
            "fraudstream_reconcile_partition_exceptions",
            "Reconciliation exceptions per partition and kind, from its durable state "
            "(survives restarts, unlike the counter).",
            ["partition", "kind"],
            registry=r,
        )

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)


class PrometheusStreamHooks:
    """The agents' reports (``streams.scoring.StreamHooks`` and
    ``streams.agents.ScoringObserver``) as metrics.

    ``reference`` is the engine's training score histogram (from its bundle): with it,
    the drift index of the last ``drift_window`` scores is exported.
    """

    def __init__(
        self,
        metrics: EngineMetrics,
        reference: ReferenceHistogram | None = None,
        drift_window: int = 10_000,
    ) -> None:
        self._m = metrics
        self._window = ScoreWindow(reference, drift_window) if reference is not None else None
        self._model_version: str | None = None

    def batch_processed(self, outcome: BatchOutcome, size: int, seconds: float) -> None:
        for outcome_name, count in outcome.outcomes.items():
            self._m.decisions.labels(outcome_name).inc(count)
        for kind, count in outcome.rejected.items():
            self._m.deadletters.labels(kind).inc(count)
        self._m.batch_seconds.observe(seconds)
        self._m.batch_size.observe(size)
        self._m.degraded.inc(outcome.degraded)
        self._m.timeout_defaults.inc(outcome.timeout_defaults)

    def labels_processed(self, outcome: LabelOutcome, size: int, seconds: float) -> None:
        for kind, count in outcome.rejected.items():
            self._m.deadletters.labels(kind).inc(count)
        self._m.labels.labels("applied").inc(outcome.applied)
        self._m.labels.labels("unchanged").inc(max(0, len(outcome.labels) - outcome.applied))

    def pipeline_failed(self, error: BaseException) -> None:
        self._m.pipeline_errors.inc()

    def decisions_produced(self, decisions: Sequence[Decision], produced_at: datetime) -> None:
        """Decisions just acknowledged by the broker (not the re-emits of remembered ones)."""
        for decision in decisions:
            latency = (produced_at - decision.event_time).total_seconds()
            self._m.decision_latency.observe(max(0.0, latency))
        if decisions:
            self._model(decisions[-1].model_version)
            for layer in decisions[-1].layers_run:
                if layer not in self._m.breakers_seen:  # it ran and never tripped: closed
                    self._m.breakers_seen.add(layer)
                    self._m.breaker_state.labels(layer).set(BREAKER_STATE_VALUES["closed"])
        if self._window is not None and decisions:
            self._window.add(d.score for d in decisions)
            self._m.score_window.set(len(self._window))
            index = self._window.psi()
            if index is not None:
                self._m.score_psi.set(index)

    def _model(self, version: str) -> None:
        if version != self._model_version:
            if self._model_version is not None:
                self._m.model_info.remove(self._model_version)
            self._m.model_info.labels(version).set(1)
            self._model_version = version

    def deduplicated(self, hits: int, remembered: int) -> None:
        self._m.dedupe_hits.inc(hits)
        self._m.dedupe_remembered.set(remembered)

    def commit_guard(self, rewinds: int, uncounted_acks: int) -> None:
        self._m.consumer_rewinds.set(rewinds)
        self._m.consumer_uncounted_acks.set(uncounted_acks)

    def ingress_rewrites(self, per_field: Mapping[str, int]) -> None:
        for field, messages in per_field.items():
            self._m.ingress_rewritten.labels(field).set(messages)

    def consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """The lag of every partition assigned now (the others' series are dropped)."""
        self._m.consumer_lag.clear()
        for (topic, partition), lag in lags.items():
            self._m.consumer_lag.labels(topic, str(partition)).set(lag)


class PrometheusEngineHooks:
    """The decision engine's callbacks (``models.decide.ScoringEngine`` and
    ``EnginePipeline``) as metrics."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._m = metrics

    def layer_result(self, report: LayerReport) -> None:
        self._m.layer_results.labels(report.layer, report.status).inc()
        if report.status in ("ok", "slow"):
            self._m.layer_seconds.labels(report.layer).observe(report.elapsed_ms / 1000.0)

    def breaker_changed(self, layer: str, old: str, new: str) -> None:
        self._m.breakers_seen.add(layer)
        self._m.breaker_state.labels(layer).set(BREAKER_STATE_VALUES.get(str(new), -1.0))

    def feature_store_error(self, error: BaseException) -> None:
        # An error the decider's child reported is labelled by its own type's name.
        name = error.type_name if isinstance(error, ReportedError) else type(error).__name__
        self._m.feature_store_errors.labels(name).inc()

    def feature_lookup(self, seconds: float, ok: bool) -> None:
        self._m.feature_store_seconds.labels("ok" if ok else "error").observe(seconds)

    def engine_error(self, error: BaseException) -> None:
        self._m.pipeline_errors.inc()

    def decider_restarted(self, reason: str) -> None:
        self._m.decider_restarts.labels(reason).inc()

    def decider_late(self) -> None:
        self._m.decider_late_batches.inc()


class PrometheusReconcileHooks:
    """The reconciliation agent's reports (``streams.reconcile.ReconcileHooks``)."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._m = metrics

    def batch_reconciled(self, outcome: ReconcileOutcome, size: int, seconds: float) -> None:
        self._m.reconcile_messages.inc(size)
        for kind, count in outcome.found.items():
            self._m.reconcile_exceptions.labels(kind).inc(count)
        for reject, count in outcome.rejected.items():
            self._m.deadletters.labels(reject).inc(count)
        for partition, totals in outcome.totals.items():
            p = str(partition)
            for name in RECONCILE_COUNTS:
                self._m.reconcile_state.labels(p, name).set(getattr(totals, name))
            for kind, count in totals.exceptions.items():
                self._m.reconcile_exceptions_by_partition.labels(p, kind).set(count)


RECONCILE_COUNTS = (
    "authorizations",
    "settlements",
    "redelivered",
    "matched",
    "opened",
    "closed",
    "open",
    "evicted",
)


def timed(fn: Callable[[T], R], report: Callable[[float, bool], None]) -> Callable[[T], R]:
    """``fn`` reporting its duration and whether it returned (``report(seconds, ok)``);
    for the feature store lookup: ``timed(store.compute, engine_hooks.feature_lookup)``."""

    def call(arg: T) -> R:
        started = time.perf_counter()
        try:
            result = fn(arg)
        except BaseException:
            report(time.perf_counter() - started, False)
            raise
        report(time.perf_counter() - started, True)
        return result

    return call
