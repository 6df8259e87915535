"""The online refresh of GNN embeddings: held back until enough history, then every
refresh period of event time, from what the worker saw and learned; state bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest

from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import SCHEMA_VERSION, LabelEvent
from models.base import ScoringBatch
from models.gnn import GNNScorer
from models.gnn.refresh import EmbeddingRefresher
from tests.models.factories import (
    World,
    small_gnn_config,
    synthetic_world,
    wire_transactions,
)

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def world() -> World:
    return synthetic_world(3000, seed=21, days=20.0)


@pytest.fixture(scope="module")
def trained(world: World) -> GNNScorer:
    """Trained on the world's first 6 days; the tests replay all 20 after it."""
    config = small_gnn_config(history_days=5.0, refresh_every_hours=24.0, epochs=10)
    times = world.transactions["event_time"]
    early = (times < times.min() + 6 * DAY).to_numpy()
    return GNNScorer.fit(world.transactions[early], None, world.labels[early], config=config)


def test_refresh_waits_for_history_then_follows_event_time(
    trained: GNNScorer, world: World
) -> None:
    refresher = EmbeddingRefresher(trained)
    txs = sorted(wire_transactions(world.transactions), key=lambda t: t.event_time)
    start = txs[0].event_time
    first_days = [t for t in txs if t.event_time < start + 2 * DAY]
    refresher.observe(first_days)
    assert not refresher.due()  # 2 days seen, the snapshot window is 5
    assert refresher.refresh() is None
    assert refresher.scorer is trained

    rest = [t for t in txs if start + 2 * DAY <= t.event_time < start + 14 * DAY]
    refresher.observe(rest)
    assert refresher.due()
    refreshed = refresher.refresh()
    assert refreshed is not None and refresher.scorer is refreshed
    assert refreshed.embeddings.as_of == max(t.event_time for t in rest)
    assert refreshed.version != trained.version
    assert refreshed.model_version == trained.model_version  # same weights
    assert not refresher.due()  # the next one is a refresh period of event time away
    # pruned to the snapshot window: at most the last 5 days of what was observed
    window = [t for t in rest if t.event_time >= refreshed.embeddings.as_of - 5 * DAY]
    assert refresher.state_size() == len(window)


def test_labels_learned_online_reach_the_embeddings(trained: GNNScorer, world: World) -> None:
    txs = sorted(wire_transactions(world.transactions), key=lambda t: t.event_time)
    frauds = set(world.transactions.loc[world.labels == 1, "transaction_id"])
    blind, informed = EmbeddingRefresher(trained), EmbeddingRefresher(trained)
    for refresher in (blind, informed):
        refresher.observe(txs)
    informed.observe_labels(
        [
            LabelEvent(
                schema_version=SCHEMA_VERSION,
                transaction_id=t.transaction_id,
                card_id=t.card_id,
                terminal_id=t.terminal_id,
                event_time=t.event_time,
                label_time=t.event_time + DAY,
                is_fraud=True,
                source="chargeback",
            )
            for t in txs
            if t.transaction_id in frauds
        ]
    )
    a, b = blind.refresh(), informed.refresh()
    assert a is not None and b is not None
    ring = [t for t in txs[-400:] if t.device_id in world.ring_devices]
    assert ring, "the synthetic world has ring traffic at its end"
    batch = ScoringBatch(ring, FeatureMatrix.empty((), len(ring)))
    # Knowing the ring's past frauds is what makes its devices' traffic suspect.
    assert b.score(batch).mean() > a.score(batch).mean()
