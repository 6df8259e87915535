"""The worker's GNN refresh: the engines in force get their embeddings refreshed in
place once due; a model swapped out takes its graph state with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from models.gnn import GNNScorer
from streams.gnn_refresh import GNN_LAYER, GnnRefresh
from tests.models.factories import small_gnn_config, synthetic_world, wire_transactions


@dataclass
class FakeEngine:
    layers: dict[str, Any] = field(default_factory=dict)


def trained_gnn_and_traffic() -> tuple[GNNScorer, list[Any]]:
    world = synthetic_world(2500, seed=5, days=16.0)
    times = world.transactions["event_time"]
    early = (times < times.min() + timedelta(days=5)).to_numpy()
    config = small_gnn_config(history_days=4.0, refresh_every_hours=24.0, epochs=5)
    gnn = GNNScorer.fit(world.transactions[early], None, world.labels[early], config=config)
    traffic = sorted(wire_transactions(world.transactions), key=lambda t: t.event_time)
    return gnn, traffic


def test_due_engines_are_refreshed_in_place_and_swapped_out_ones_forgotten() -> None:
    gnn, traffic = trained_gnn_and_traffic()
    champion = FakeEngine({GNN_LAYER: gnn, "xgboost": object()})
    no_gnn = FakeEngine({"xgboost": object()})
    live = [champion, no_gnn]
    refresh = GnnRefresh(lambda: live)

    refresh.observe(traffic[:50])
    assert refresh.refresh_due() == 0  # not enough history yet: trained embeddings stay
    assert champion.layers[GNN_LAYER] is gnn

    refresh.observe(traffic[50:])
    assert refresh.refresh_due() == 1
    refreshed = champion.layers[GNN_LAYER]
    assert refreshed is not gnn and refreshed.model_version == gnn.model_version
    assert refreshed.embeddings.as_of == traffic[-1].event_time
    assert refresh.refresh_due() == 0  # the next refresh is a period of event time away

    successor = FakeEngine({GNN_LAYER: gnn})
    live[:] = [successor]  # a new champion swapped in
    refresh.observe(traffic[-10:])
    assert refresh.refresh_due() == 0  # its own state starts empty
    assert successor.layers[GNN_LAYER] is gnn
