"""The naive design the engine is measured against, end to end: a Faust agent that
handles one message at a time — decodes it alone, computes its features with one Redis
round trip per feature (``benchmarks/naive_feature_store.py``), calls the engine on a
batch of one, and waits for the decision's acknowledgement before taking the next.
Same trained engine, same topics and settings as ``fraudstream worker``.

    FRAUDSTREAM__... python -m benchmarks.naive_worker
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import faust
import msgspec

from benchmarks.naive_feature_store import NaiveRedisFeatureStore
from fraudstream.settings import Settings, load_settings
from fraudstream.wire import Transaction, encode
from models.base import ScoringBatch
from models.decide import ScoringEngine
from streams.app import create_app, declare_topics
from streams.worker import redis_client
from training.bundle import load_bundle


def build(settings: Settings) -> faust.App:
    trained = load_bundle(settings.models.bundle_dir)
    engine = ScoringEngine.from_ensemble(
        trained.ensemble, scoring=settings.scoring, breaker=settings.breaker
    )
    store = NaiveRedisFeatureStore(redis_client(settings), key_prefix=settings.features.key_prefix)
    decoder = msgspec.json.Decoder(Transaction)
    app = create_app(settings)
    topics = declare_topics(app, settings)

    async def one_by_one(stream: Any) -> None:
        async for event in stream.events():
            try:
                tx = decoder.decode(event.value)
            except msgspec.MsgspecError:
                continue  # the engine dead-letters; the naive design just drops
            features = store.compute([tx])
            decision = engine.decide(ScoringBatch([tx], features), datetime.now(UTC))[0]
            sent = await topics.decisions.send(key=tx.card_id.encode(), value=encode(decision))
            await sent  # acknowledged before the next message: one at a time

    app.agent(topics.transactions, name="naive", concurrency=1)(one_by_one)
    return app


def main() -> None:
    settings = load_settings(None, os.environ)  # the entry point: settings loaded once
    worker = faust.Worker(build(settings), loglevel="info", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
