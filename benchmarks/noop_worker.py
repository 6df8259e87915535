"""The physical limit the engine is measured against: a Faust worker that consumes the
transactions topic and produces each value unchanged to the decisions topic, with the
same app settings, micro-batching and acknowledgement discipline as the real worker
(the scoring agent's own loop, ``streams.scoring_loop.scoring_agent``: the next batch read and
sent while the last one waits for the broker) but no decoding, features or scoring.

    FRAUDSTREAM__... python -m benchmarks.noop_worker
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import faust

from fraudstream.settings import load_settings
from streams.app import create_app, declare_topics
from streams.scoring import BatchOutcome, NoHooks, RawMessage
from streams.scoring_loop import SentBatch, scoring_agent, send_all


def build(settings: Any) -> faust.App:
    app = create_app(settings)
    topics = declare_topics(app, settings)
    max_batch = settings.scoring.max_batch_size
    window = settings.scoring.batch_window_ms / 1000.0

    class Forward:
        """Each value to the decisions topic, unchanged."""

        async def send(self, messages: Sequence[RawMessage]) -> SentBatch:
            return SentBatch(BatchOutcome(), [], await send_all(topics.decisions, messages))

    forward = scoring_agent(app, Forward(), NoHooks(), max_batch=max_batch, within_s=window)
    app.agent(topics.transactions, name="noop", concurrency=1)(forward)
    return app


def main() -> None:
    # The benchmark's entry point, like the CLI's root: settings loaded once, here.
    settings = load_settings(None, os.environ)
    app = build(settings)
    worker = faust.Worker(app, loglevel="info", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
