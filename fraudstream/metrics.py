"""Every Prometheus metric fraudstream exports, declared in one place.

Scoring and feature code never import prometheus_client: they report through hook
objects, and the implementations here turn those reports into metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from streams.scoring import BatchOutcome


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
