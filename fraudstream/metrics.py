"""Every Prometheus metric fraudstream exports, declared in one place.

Scoring and feature code never import prometheus_client: they report through hook
objects, and the implementations here turn those reports into metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streams.scoring import BatchOutcome, LabelOutcome

if TYPE_CHECKING:
    from models.decide import LayerReport

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

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)


class PrometheusStreamHooks:
    def __init__(self, metrics: EngineMetrics) -> None:
        self._m = metrics

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
        self._m.breaker_state.labels(layer).set(BREAKER_STATE_VALUES.get(str(new), -1.0))

    def feature_store_error(self, error: BaseException) -> None:
        self._m.feature_store_errors.labels(type(error).__name__).inc()

    def engine_error(self, error: BaseException) -> None:
        self._m.pipeline_errors.inc()
