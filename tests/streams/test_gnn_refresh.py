"""The worker's GNN refresh: the engines in force get their embeddings refreshed in
place once due; a model swapped out takes its graph state with it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from models.gnn import GNNScorer
from streams.gnn_refresh import GNN_LAYER, GnnRefresh
from tests.models.factories import small_gnn_config, synthetic_world, wire_transactions
from tests.streams.harness import REPO


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


WARM_UP = """
import sys
from streams.gnn_refresh import GNN_LAYER, GnnRefresh
from models.gnn import GNNScorer

class Engine:
    def __init__(self, layers): self.layers = layers

gnn = GNNScorer.__new__(GNNScorer)  # only its type matters to warm_up
assert not GnnRefresh(lambda: [Engine({"xgboost": object()})]).warm_up()
assert "torch_geometric" not in sys.modules, "serving imported PyG by itself"
assert GnnRefresh(lambda: [Engine({GNN_LAYER: gnn})]).warm_up()
assert "torch_geometric" in sys.modules and "models.gnn.training" in sys.modules
"""

WARM_UP_CHILD = """
import sys
from models.gnn.refresh_process import ChildProcessEmbeddings
from streams.gnn_refresh import GNN_LAYER, GnnRefresh
from models.gnn import GNNScorer

class Engine:
    def __init__(self, layers): self.layers = layers

child = ChildProcessEmbeddings()
refresh = GnnRefresh(lambda: [Engine({GNN_LAYER: GNNScorer.__new__(GNNScorer)})], child=child)
assert refresh.warm_up()
assert child.warm_up().result(timeout=120)  # the child has started and imported torch
(pid,) = child._executor()._processes  # the child has torch's libraries mapped
assert "libtorch" in open(f"/proc/{pid}/maps").read()
nice = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])
assert nice == 19, f"the child runs at nice {nice}, not the lowest priority"
assert "torch" not in sys.modules, "the worker imported torch although the child runs it"
refresh.close()
"""


def run_in_a_fresh_interpreter(script: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_warm_up_imports_the_refresh_machinery_only_with_a_gnn_layer() -> None:
    """In a fresh interpreter: serving alone never imports PyTorch Geometric, so the
    worker must import it at start-up rather than at the first refresh, mid-stream."""
    run_in_a_fresh_interpreter(WARM_UP)


def test_with_a_child_process_the_child_imports_torch_and_the_worker_never_does() -> None:
    run_in_a_fresh_interpreter(WARM_UP_CHILD)
