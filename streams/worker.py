"""``fraudstream worker``: build the app from settings and run it until stopped."""

from __future__ import annotations

import asyncio
import logging

import faust

from fraudstream.metrics import EngineMetrics, PrometheusStreamHooks
from fraudstream.settings import Settings
from streams.agents import register_scoring_agent
from streams.app import create_app, declare_topics
from streams.scoring import PlaceholderPipeline
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def build_worker_app(settings: Settings, metrics: EngineMetrics) -> faust.App:
    app = create_app(settings)
    topics = declare_topics(app, settings)
    register_scoring_agent(
        app,
        topics,
        PlaceholderPipeline(),
        PrometheusStreamHooks(metrics),
        max_batch=settings.scoring.max_batch_size,
        batch_window_s=settings.scoring.batch_window_ms / 1000.0,
        max_message_bytes=settings.kafka.max_message_bytes,
    )
    return app


def run_worker(settings: Settings) -> None:
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(settings.kafka))
    metrics = EngineMetrics()
    if settings.worker.metrics_port:
        metrics.serve(settings.worker.metrics_port)
    app = build_worker_app(settings, metrics)
    worker = faust.Worker(app, loglevel=settings.worker.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
