"""The online refresh of GNN embeddings: held back until enough history, then every
refresh period of event time, from what the worker saw and learned; state bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import SCHEMA_VERSION, LabelEvent
from models.base import ScoringBatch
from models.gnn import GNNScorer
from models.gnn.graph import GraphState
from models.gnn.refresh import EmbeddingRefresher
from models.gnn.refresh_process import ChildProcessEmbeddings
from tests.models.factories import (
    World,
    small_gnn_config,
    synthetic_world,
    wire_transactions,
)

DAY = timedelta(days=1)
REPO = Path(__file__).resolve().parents[2]


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
    informed.observe_labels([_chargeback(t) for t in txs if t.transaction_id in frauds])
    a, b = blind.refresh(), informed.refresh()
    assert a is not None and b is not None
    ring = [t for t in txs[-400:] if t.device_id in world.ring_devices]
    assert ring, "the synthetic world has ring traffic at its end"
    batch = ScoringBatch(ring, FeatureMatrix.empty((), len(ring)))
    # Knowing the ring's past frauds is what makes its devices' traffic suspect.
    assert b.score(batch).mean() > a.score(batch).mean()


def _replay_until_due(refresher: EmbeddingRefresher, world: World) -> None:
    txs = sorted(wire_transactions(world.transactions), key=lambda t: t.event_time)
    refresher.observe([t for t in txs if t.event_time < txs[0].event_time + 10 * DAY])
    assert refresher.due()


def test_a_refresh_in_a_child_process_gives_the_embeddings_of_one_here(
    trained: GNNScorer, world: World, tmp_path: Path
) -> None:
    here = EmbeddingRefresher(trained)
    child = ChildProcessEmbeddings(scratch=tmp_path)
    try:
        there = EmbeddingRefresher(trained, compute=child)
        for refresher in (here, there):
            _replay_until_due(refresher, world)
        mine, theirs = here.refresh(), there.refresh()
    finally:
        child.close()
    assert mine is not None and theirs is not None and there.scorer is theirs
    assert child.completed == 1
    assert theirs.embeddings.as_of == mine.embeddings.as_of
    assert theirs.model_version == trained.model_version and theirs.version != trained.version
    for node_type, ids in mine.embeddings.ids.items():
        assert list(theirs.embeddings.ids[node_type]) == list(ids)
        # one torch thread there, the default here: float sums may differ in order
        np.testing.assert_allclose(
            theirs.embeddings.vectors[node_type], mine.embeddings.vectors[node_type], atol=1e-5
        )
    assert list(tmp_path.iterdir()) == []  # the scratch files are gone


def test_a_child_that_dies_fails_one_refresh_and_the_next_starts_another(
    trained: GNNScorer, world: World, tmp_path: Path
) -> None:
    child = ChildProcessEmbeddings(scratch=tmp_path)
    try:
        assert child.warm_up().result(timeout=120)
        # the child dies (killed, out of memory) between two refreshes
        with pytest.raises(BrokenProcessPool):
            child._executor().submit(os._exit, 9).result(timeout=60)
        refresher = EmbeddingRefresher(trained, compute=child)
        _replay_until_due(refresher, world)
        with pytest.raises(BrokenProcessPool):
            refresher.refresh()
        assert refresher.scorer is trained and refresher.due()  # nothing changed
        refreshed = refresher.refresh()
    finally:
        child.close()
    assert refreshed is not None and refresher.scorer is refreshed
    assert child.completed == 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_close_stops_a_child_in_the_middle_of_its_work(tmp_path: Path) -> None:
    """A stopping worker does not wait for the refresh in hand: the interpreter's exit
    would otherwise wait for the child (minutes at the lowest priority when busy)."""
    child = ChildProcessEmbeddings(scratch=tmp_path)
    pid = child._executor().submit(os.getpid).result(timeout=120)
    assert pid != os.getpid()
    busy = child._executor().submit(time.sleep, 120)  # a refresh that takes long
    time.sleep(0.5)
    began = time.monotonic()
    child.close()
    assert _wait_gone(pid, 10), "the child still runs after close()"
    with pytest.raises(BrokenProcessPool):
        busy.result(timeout=10)  # what a refresh waiting on it gets: it fails
    assert time.monotonic() - began < 15


def test_a_child_whose_worker_is_killed_exits_without_finishing_its_work(
    tmp_path: Path,
) -> None:
    """A worker killed with SIGKILL runs no clean-up: its child must not run on."""
    script = (
        "import os, sys, time\n"
        "from models.gnn.refresh_process import ChildProcessEmbeddings\n"
        "child = ChildProcessEmbeddings()\n"
        "print(child._executor().submit(os.getpid).result(timeout=120), flush=True)\n"
        "child._executor().submit(time.sleep, 120)\n"
        "time.sleep(120)\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline())
        time.sleep(0.5)  # the child is in its two-minute sleep
        worker.kill()
        worker.wait(10)
        assert _wait_gone(pid, 10), "the child outlived its killed worker"
    finally:
        if worker.poll() is None:
            worker.kill()


class LabelCountingState(GraphState):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_calls: list[int] = []

    def record_labels(self, transaction_ids: Any, *args: Any, **kwargs: Any) -> None:
        self.label_calls.append(len(transaction_ids))
        super().record_labels(transaction_ids, *args, **kwargs)


def test_labels_wait_for_the_refresh_and_are_recorded_in_one_go(
    trained: GNNScorer, world: World
) -> None:
    """Recording labels rewrites the whole state, so a labels batch only queues them:
    the refresh records all of them at once, after the transactions they label."""
    state = LabelCountingState(trained.entity_columns, trained.config.history)
    refresher = EmbeddingRefresher(trained, state=state)
    txs = sorted(wire_transactions(world.transactions), key=lambda t: t.event_time)
    window = [t for t in txs if t.event_time < txs[0].event_time + 10 * DAY]
    refresher.observe(window)
    labelled = window[-300:]  # still within the snapshot window after the refresh prunes
    for start in range(0, 300, 100):  # three labels batches, as they arrive
        refresher.observe_labels([_chargeback(t) for t in labelled[start : start + 100]])
    assert state.label_calls == []
    assert refresher.refresh() is not None
    assert state.label_calls == [300]
    known = state._consolidated().loc[[t.transaction_id for t in labelled], "is_fraud"]
    assert (known == 1.0).all()


def _chargeback(t: Any) -> LabelEvent:
    return LabelEvent(
        schema_version=SCHEMA_VERSION,
        transaction_id=t.transaction_id,
        card_id=t.card_id,
        terminal_id=t.terminal_id,
        event_time=t.event_time,
        label_time=t.event_time + DAY,
        is_fraud=True,
        source="chargeback",
    )
