"""The physical limit the engine is measured against: a Faust worker that consumes the
transactions topic and produces each value unchanged to the decisions topic, with the
same app settings, micro-batching and acknowledgement discipline as the real worker
(``streams/agents.py``) but no decoding, features or scoring.

    FRAUDSTREAM__... python -m benchmarks.noop_worker
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust

from fraudstream.settings import load_settings
from streams.agents import send_all
from streams.app import create_app, declare_topics


def build(settings: Any) -> faust.App:
    app = create_app(settings)
    topics = declare_topics(app, settings)
    max_batch = settings.scoring.max_batch_size
    window = settings.scoring.batch_window_ms / 1000.0

    async def forward(stream: Any) -> None:
        async for events in stream.take_events(max_batch, within=window):
            await asyncio.gather(*await send_all(topics.decisions, [e.message for e in events]))

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
