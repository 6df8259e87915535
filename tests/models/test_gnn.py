from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from features.matrix import FeatureMatrix
from models.base import ScoringBatch
from models.gnn import GNNScorer, GraphState
from models.gnn.graph import NODE_FEATURES, cold_features
from models.gnn.model import head_from_arrays
from tests.models.factories import (
    START,
    World,
    small_gnn_config,
    synthetic_world,
    wire_transactions,
)

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def world() -> World:
    return synthetic_world(4000, seed=11)


@pytest.fixture(scope="module")
def graph_only(world: World) -> GNNScorer:
    # No tabular features: whatever the model knows, it learned from the graph.
    return GNNScorer.fit(world.transactions, None, world.labels, config=small_gnn_config())


def _new_card_batch(devices: list[str], ips: list[str], seed: int) -> ScoringBatch:
    """Transactions by cards never seen before, on the given devices and IPs."""
    rng = np.random.default_rng(seed)
    rows = len(devices)
    frame = pd.DataFrame(
        {
            "transaction_id": [f"new-{seed}-{i}" for i in range(rows)],
            "event_time": [START + 20 * DAY + timedelta(minutes=i) for i in range(rows)],
            "card_id": [f"card_new_{seed}_{i}" for i in range(rows)],
            "terminal_id": [f"term_{t:03d}" for t in rng.integers(2, 40, rows)],
            "merchant_id": [None] * rows,
            "device_id": devices,
            "ip": ips,
            "amount": rng.uniform(10, 100, rows).round(2),
        }
    )
    return ScoringBatch(wire_transactions(frame), FeatureMatrix.empty((), rows))


def test_fresh_cards_on_ring_devices_score_above_fresh_cards_elsewhere(
    graph_only: GNNScorer, world: World
) -> None:
    ring_devices = sorted(world.ring_devices)
    ring = _new_card_batch(
        [ring_devices[i % 3] for i in range(60)], ["10.0.0.0", "10.0.0.1"] * 30, seed=1
    )
    clean = _new_card_batch(
        [f"dev_{100 + c:04d}" for c in range(40, 100)],
        [f"10.0.0.{100 + c // 2}" for c in range(40, 100)],
        seed=2,
    )
    ring_scores, clean_scores = graph_only.score(ring), graph_only.score(clean)
    labels = np.r_[np.ones(60), np.zeros(60)]
    assert roc_auc_score(labels, np.r_[ring_scores, clean_scores]) > 0.95
    assert ring_scores.mean() > clean_scores.mean() + 0.2


def test_unseen_entities_score_like_entities_without_history(graph_only: GNNScorer) -> None:
    unseen = _new_card_batch(
        [f"dev_never_{i}" for i in range(20)], [f"192.168.0.{i}" for i in range(20)], seed=3
    )
    absent = _new_card_batch([None] * 20, [None] * 20, seed=3)  # type: ignore[list-item]
    scores = graph_only.score(unseen)
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, graph_only.score(absent))


def test_numpy_head_mirrors_the_torch_head(graph_only: GNNScorer) -> None:
    batch = _new_card_batch(["dev_0000"] * 5 + ["dev_0150"] * 5, ["10.0.0.0"] * 10, seed=4)
    head = head_from_arrays(graph_only.head_weights)
    with torch.inference_mode():
        logits = head(torch.from_numpy(graph_only.head_input(batch)).float()).squeeze(1)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), graph_only.score(batch), atol=1e-5)


def test_training_is_reproducible(world: World) -> None:
    config = small_gnn_config(epochs=5)
    a = GNNScorer.fit(world.transactions, world.features, world.labels, config=config)
    b = GNNScorer.fit(world.transactions, world.features, world.labels, config=config)
    assert a.version == b.version


def test_training_on_two_threads_is_reproducible_on_a_large_graph() -> None:
    # Below some size torch's CPU scatter sums run on one thread anyway; at 60,000
    # payments two trainings on two threads differed until deterministic kernels.
    big = synthetic_world(60_000, seed=5, days=10.0)
    config = small_gnn_config(
        history_days=4.0, epochs=2, head_epochs=0, train_threads=2, label_delay_days=2.0
    )
    a = GNNScorer.fit(big.transactions, None, big.labels, config=config)
    b = GNNScorer.fit(big.transactions, None, big.labels, config=config)
    assert a.version == b.version
    assert not torch.are_deterministic_algorithms_enabled()  # put back afterwards


def test_refresh_reads_what_the_graph_state_knows(graph_only: GNNScorer, world: World) -> None:
    as_of = world.transactions["event_time"].max() + timedelta(hours=1)
    unlabelled = GraphState(graph_only.entity_columns, timedelta(days=20))
    unlabelled.append_frame(world.transactions.drop(columns="is_fraud"))
    labelled = GraphState(graph_only.entity_columns, timedelta(days=20))
    labelled.append_frame(world.transactions, label_delay=timedelta(days=2))
    probe = _new_card_batch(sorted(world.ring_devices) * 10, ["10.9.9.9"] * 30, seed=5)

    blind = graph_only.refresh(unlabelled, as_of)
    informed = graph_only.refresh(labelled, as_of)
    # Knowing the ring devices' past fraud is what makes their new cards suspect.
    assert informed.score(probe).mean() > blind.score(probe).mean() + 0.1
    assert informed.version != blind.version
    assert informed.model_version == blind.model_version == graph_only.model_version
    # Same state, same time: the same embeddings and version as training produced.
    again = graph_only.refresh(labelled, graph_only.embeddings.as_of)
    assert again.version == graph_only.version


def _tiny_state(delay: timedelta) -> GraphState:
    frame = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "d"],
            "event_time": [
                START,
                START + timedelta(hours=1),
                START + timedelta(hours=2),
                START + 5 * DAY,
            ],
            "card_id": ["c1", "c1", "c2", "c3"],
            "terminal_id": ["t1", "t1", "t1", "t2"],
            "device_id": ["d1", "d1", "d1", None],
            "amount": [10.0, 20.0, 30.0, 40.0],
            "is_fraud": [1, 1, 0, 0],
        }
    )
    state = GraphState(("card_id", "terminal_id", "device_id"), timedelta(days=30))
    state.append_frame(frame, label_delay=delay)
    return state


def test_the_state_round_trips_through_parquet_with_its_labels(tmp_path: Path) -> None:
    state = _tiny_state(delay=2 * DAY)
    state.write_parquet(tmp_path / "state.parquet")
    back = GraphState.read_parquet(tmp_path / "state.parquet", state.entity_columns, state.history)
    pd.testing.assert_frame_equal(back._consolidated(), state._consolidated())
    for as_of in (START + DAY, START + 3 * DAY):  # before and after the labels are known
        mine, theirs = state.snapshot(as_of), back.snapshot(as_of)
        for node_type, nodes in mine.nodes.items():
            np.testing.assert_array_equal(theirs.nodes[node_type].x, nodes.x)
            assert list(theirs.nodes[node_type].ids) == list(nodes.ids)


def test_snapshot_uses_only_labels_known_by_then() -> None:
    state = _tiny_state(delay=2 * DAY)
    rate = NODE_FEATURES.index("known_fraud_rate")
    before = state.snapshot(START + DAY).nodes["device"]
    after = state.snapshot(START + 3 * DAY).nodes["device"]
    d1 = int(before.rows(["d1"])[0])
    assert before.x[d1, rate] == 0.0
    assert after.x[int(after.rows(["d1"])[0]), rate] == pytest.approx(2 / 3)  # 2 of 3 txs


def test_snapshot_sees_only_the_past_and_dedupes_edges() -> None:
    snapshot = _tiny_state(delay=DAY).snapshot(START + timedelta(hours=1, minutes=30))
    assert list(snapshot.nodes["card"].ids) == ["c1"]  # c2 and c3 are still in the future
    assert snapshot.edges[("card", "uses", "device")].shape == (2, 1)  # c1-d1 twice -> once
    log_tx = NODE_FEATURES.index("log_tx")
    assert snapshot.nodes["device"].x[0, log_tx] == pytest.approx(np.log1p(2))


def test_unseen_and_missing_ids_map_to_the_cold_row() -> None:
    nodes = _tiny_state(delay=DAY).snapshot(START + 10 * DAY).nodes["device"]
    rows = nodes.rows(["d1", "nope", None])
    assert rows[0] == 0 and rows[1] == rows[2] == nodes.cold == 1
    np.testing.assert_array_equal(nodes.x[nodes.cold], cold_features(30.0)[0])


def test_record_labels_online() -> None:
    state = GraphState(("card_id", "terminal_id", "device_id"), timedelta(days=30))
    frame = pd.DataFrame(
        {
            "transaction_id": ["x1", "x2"],
            "event_time": [START, START + timedelta(minutes=5)],
            "card_id": ["c1", "c2"],
            "terminal_id": ["t1", "t1"],
            "device_id": ["d1", "d2"],
            "amount": [5.0, 6.0],
        }
    )
    state.append_transactions(wire_transactions(frame.assign(merchant_id=None, ip=None)))
    state.record_labels(["x1", "unknown-id"], [1, 1], START + DAY)
    rate = NODE_FEATURES.index("known_fraud_rate")
    early = state.snapshot(START + timedelta(hours=12)).nodes["terminal"]
    late = state.snapshot(START + 2 * DAY).nodes["terminal"]
    assert early.x[0, rate] == 0.0
    assert late.x[0, rate] == pytest.approx(0.5)  # one of the terminal's two payments


def test_pruned_transactions_no_longer_shape_snapshots() -> None:
    state = _tiny_state(delay=DAY)
    state.prune(START + 3 * DAY)
    assert len(state) == 1
    snapshot = state.snapshot(START + 10 * DAY)
    assert list(snapshot.nodes["card"].ids) == ["c3"]
    assert list(snapshot.nodes["terminal"].ids) == ["t2"]


def test_labels_can_arrive_each_at_its_own_time() -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["p", "q"],
            "event_time": [START, START],
            "card_id": ["c1", "c2"],
            "terminal_id": ["t1", "t2"],
            "amount": [5.0, 6.0],
            "is_fraud": [1, 1],
            # A fast investigator verdict, and a chargeback that never came.
            "label_known_at": [START + timedelta(hours=2), pd.NaT],
        }
    )
    state = GraphState(("card_id", "terminal_id"), timedelta(days=30))
    state.append_frame(frame)
    rate = NODE_FEATURES.index("known_fraud_rate")
    terminals = state.snapshot(START + DAY).nodes["terminal"]
    assert terminals.x[terminals.rows(["t1", "t2"]), rate].tolist() == [1.0, 0.0]
    state.record_labels(["q"], [1], [START + 2 * DAY])
    later = state.snapshot(START + 3 * DAY).nodes["terminal"]
    assert later.x[later.rows(["t1", "t2"]), rate].tolist() == [1.0, 1.0]


def test_needs_an_entity_besides_the_card(world: World) -> None:
    cards_only = world.transactions[["transaction_id", "event_time", "card_id", "amount"]]
    with pytest.raises(ValueError, match="entity type besides the card"):
        GNNScorer.fit(cards_only, None, world.labels, config=small_gnn_config(epochs=1))
