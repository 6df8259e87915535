"""The offline half of the GNN layer: a heterogeneous GraphSAGE encoder and its training.

Torch lives here only. The online scorer never imports this module: it looks up the
embeddings this encoder produced and runs the small head in NumPy.

Encoder: two ``HeteroConv`` layers of per-relation ``SAGEConv`` (mean aggregation),
summed over relations, so a card's embedding mixes its own history with the mean of
its terminals', devices' and IPs' — and, at two hops, with the other cards sharing
them. Head: an MLP over [one embedding per entity type, a seen/unseen flag per type,
the standardised tabular features].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch_geometric.nn import HeteroConv, SAGEConv

from models.gnn.config import GNNConfig
from models.gnn.graph import EdgeType, GraphSnapshot

Arrays = dict[str, npt.NDArray[np.float32]]
# Per window: node features, edges, entity rows, cold rows, tabular features, labels.
Prepared = tuple[
    dict[str, torch.Tensor],
    dict[EdgeType, torch.Tensor],
    dict[str, torch.Tensor],
    dict[str, int],
    torch.Tensor,
    torch.Tensor,
]


@contextmanager
def reproducible_torch(threads: int | None = None) -> Iterator[None]:
    """Run torch on ``threads`` threads (None: as it is) with deterministic kernels.

    Why: on more than one thread, the CPU kernels behind message passing and its
    gradients (scatter and index-add sums) add floats in an order that varies from run
    to run once a graph is large: two trainings on the same handbook week, same seed,
    gave models ~0.3 apart on some scores, and two full evaluations differed by 0.003
    in the GNN's average precision. Deterministic kernels were not slower here (a
    handbook week, 10 epochs: 2.0 s either way; the whole handbook evaluation went from
    14-20 min to ~5.5 min on two cores). Both settings are process-wide, so they are
    put back on the way out.
    """
    previous_threads = torch.get_num_threads()
    previous_mode = torch.are_deterministic_algorithms_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_mode)
        torch.set_num_threads(previous_threads)


class Encoder(nn.Module):
    def __init__(
        self,
        relations: Sequence[EdgeType],
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
    ) -> None:
        super().__init__()
        if not relations:
            raise ValueError("the graph needs at least one entity type besides the card")
        self.conv1 = HeteroConv(
            {r: SAGEConv((in_dim, in_dim), hidden_dim, aggr="mean") for r in relations},
            aggr="sum",
        )
        self.conv2 = HeteroConv(
            {r: SAGEConv((hidden_dim, hidden_dim), out_dim, aggr="mean") for r in relations},
            aggr="sum",
        )

    def forward(
        self, x: dict[str, torch.Tensor], edges: dict[EdgeType, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        hidden = {k: torch.relu(v) for k, v in self.conv1(x, edges).items()}
        out: dict[str, torch.Tensor] = self.conv2(hidden, edges)
        return out


def make_head(in_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))


@dataclass(frozen=True)
class NodeScaler:
    """Per node type, the mean and scale of each node feature (fitted on training)."""

    mean: Mapping[str, npt.NDArray[np.float32]]
    scale: Mapping[str, npt.NDArray[np.float32]]

    @classmethod
    def fit(cls, snapshots: Sequence[GraphSnapshot]) -> NodeScaler:
        mean: dict[str, npt.NDArray[np.float32]] = {}
        scale: dict[str, npt.NDArray[np.float32]] = {}
        for node_type in snapshots[0].nodes:
            rows = np.vstack([s.nodes[node_type].x for s in snapshots])
            mean[node_type] = rows.mean(axis=0).astype(np.float32)
            std = rows.std(axis=0)
            scale[node_type] = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        return cls(mean, scale)

    def apply(self, snapshot: GraphSnapshot) -> dict[str, torch.Tensor]:
        return {
            t: torch.from_numpy((n.x - self.mean[t]) / self.scale[t]).float()
            for t, n in snapshot.nodes.items()
        }


def edge_tensors(snapshot: GraphSnapshot) -> dict[EdgeType, torch.Tensor]:
    return {r: torch.from_numpy(e).long() for r, e in snapshot.edges.items()}


@dataclass(frozen=True)
class TrainingWindow:
    """The transactions of one refresh period, scored with the snapshot taken before it."""

    snapshot: GraphSnapshot
    rows: Mapping[str, npt.NDArray[np.int64]]  # node row per transaction, per type
    tabular: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]


def head_input(
    embeddings: Mapping[str, torch.Tensor],
    rows: Mapping[str, torch.Tensor],
    cold: Mapping[str, int],
    tabular: torch.Tensor,
    node_types: Sequence[str],
) -> torch.Tensor:
    """[embedding per type, seen flag per type, tabular]; the online scorer mirrors it."""
    parts = [embeddings[t][rows[t]] for t in node_types]
    parts += [(rows[t] != cold[t]).float().unsqueeze(1) for t in node_types]
    parts.append(tabular)
    return torch.cat(parts, dim=1)


def train(
    windows: Sequence[TrainingWindow],
    scaler: NodeScaler,
    node_types: Sequence[str],
    relations: Sequence[EdgeType],
    config: GNNConfig,
) -> tuple[Encoder, nn.Sequential]:
    """Full-batch training: every epoch embeds each window's graph and scores its rows."""
    with reproducible_torch(config.train_threads):
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        in_dim = next(iter(windows[0].snapshot.nodes.values())).x.shape[1]
        encoder = Encoder(relations, in_dim, config.hidden_dim, config.embedding_dim)
        tabular_dim = windows[0].tabular.shape[1]
        head = make_head(
            len(node_types) * (config.embedding_dim + 1) + tabular_dim, config.head_hidden
        )
        optimiser = torch.optim.Adam(
            [*encoder.parameters(), *head.parameters()],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        prepared: list[Prepared] = [
            (
                scaler.apply(w.snapshot),
                edge_tensors(w.snapshot),
                {t: torch.from_numpy(r) for t, r in w.rows.items()},
                {t: w.snapshot.nodes[t].cold for t in node_types},
                torch.from_numpy(w.tabular),
                torch.from_numpy(w.labels),
            )
            for w in windows
            if len(w.labels)
        ]
        labels = torch.cat([p[5] for p in prepared])
        loss_fn = nn.BCEWithLogitsLoss()
        encoder.train()
        head.train()
        for _ in range(config.epochs):
            optimiser.zero_grad()
            logits = []
            for x, edges, rows, cold, tabular, _labels in prepared:
                embeddings = encoder(x, edges)
                dropped = _drop(rows, cold, config, generator)
                features = head_input(embeddings, dropped, cold, tabular, node_types)
                logits.append(head(features).squeeze(1))
            loss = loss_fn(torch.cat(logits), labels)
            loss.backward()
            optimiser.step()
        encoder.eval()
        _fit_head(
            head,
            encoder,
            prepared=prepared,
            node_types=node_types,
            config=config,
            generator=generator,
        )
        head.eval()
        return encoder, head


def _fit_head(
    head: nn.Sequential,
    encoder: Encoder,
    *,
    prepared: Sequence[Prepared],
    node_types: Sequence[str],
    config: GNNConfig,
    generator: torch.Generator,
) -> None:
    """Mini-batch epochs over the rows with the encoder frozen.

    Each joint epoch above costs a full pass over every graph, so it can afford only a
    few dozen optimiser steps; the head needs far more to fit the tabular features.
    With the embeddings fixed, an epoch of the head alone costs milliseconds.
    """
    if config.head_epochs == 0:
        return
    with torch.no_grad():
        frozen = [encoder(x, edges) for x, edges, *_ in prepared]
    labels = torch.cat([p[5] for p in prepared])
    optimiser = torch.optim.Adam(
        head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    head.train()
    for _ in range(config.head_epochs):
        with torch.no_grad():
            inputs = torch.cat(
                [
                    head_input(emb, _drop(rows, cold, config, generator), cold, tabular, node_types)
                    for emb, (_, _, rows, cold, tabular, _) in zip(frozen, prepared, strict=True)
                ]
            )
        order = torch.randperm(len(labels), generator=generator)
        for chunk in torch.split(order, config.head_batch_size):
            optimiser.zero_grad()
            loss = loss_fn(head(inputs[chunk]).squeeze(1), labels[chunk])
            loss.backward()
            optimiser.step()


def _drop(
    rows: Mapping[str, torch.Tensor],
    cold: Mapping[str, int],
    config: GNNConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Replace a share of entities by the cold-start entity (see ``entity_dropout``)."""
    return {
        t: torch.where(torch.rand(len(r), generator=generator) < config.entity_dropout, cold[t], r)
        for t, r in rows.items()
    }


def embed(encoder: Encoder, snapshot: GraphSnapshot, scaler: NodeScaler) -> Arrays:
    """Embeddings of every entity of ``snapshot`` (last row per type: the cold entity)."""
    with reproducible_torch(), torch.inference_mode():
        out = encoder(scaler.apply(snapshot), edge_tensors(snapshot))
    return {t: v.numpy().astype(np.float32) for t, v in out.items()}


def state_arrays(module: nn.Module) -> Arrays:
    return {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}


def load_state(module: nn.Module, arrays: Mapping[str, npt.NDArray[np.float32]]) -> None:
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def head_arrays(head: nn.Sequential) -> Arrays:
    """The head as plain matrices for the NumPy forward pass."""
    first, last = head[0], head[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    return {
        "w1": first.weight.detach().numpy().T.copy(),
        "b1": first.bias.detach().numpy().copy(),
        "w2": last.weight.detach().numpy().T.copy(),
        "b2": last.bias.detach().numpy().copy(),
    }


def head_from_arrays(arrays: Mapping[str, npt.NDArray[np.float32]]) -> nn.Sequential:
    """The torch head back from :func:`head_arrays` (checks, debugging)."""
    w1, w2 = arrays["w1"], arrays["w2"]
    head = make_head(w1.shape[0], w1.shape[1])
    state = {
        "0.weight": torch.from_numpy(np.ascontiguousarray(w1.T)),
        "0.bias": torch.from_numpy(np.array(arrays["b1"])),
        "2.weight": torch.from_numpy(np.ascontiguousarray(w2.T)),
        "2.bias": torch.from_numpy(np.array(arrays["b2"])),
    }
    head.load_state_dict(state)
    return head.eval()
