"""Fitting the GNN layer from a transaction table, and recomputing its embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.matrix import FeatureMatrix
from models.gnn.config import GNNConfig
from models.gnn.graph import (
    ENTITY_TYPES,
    GraphSnapshot,
    GraphState,
    edge_types,
    normalise_transactions,
)
from models.gnn.model import (
    Encoder,
    NodeScaler,
    TrainingWindow,
    embed,
    head_arrays,
    load_state,
    state_arrays,
    train,
)
from models.gnn.scorer import EmbeddingTable
from models.tabular import Standardiser

Floats32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FittedGNN:
    entity_columns: tuple[str, ...]
    tabular: Standardiser
    node_mean: dict[str, Floats32]
    node_scale: dict[str, Floats32]
    encoder_state: dict[str, Floats32]
    head: dict[str, Floats32]
    embeddings: EmbeddingTable


def fit_gnn(
    transactions: pd.DataFrame,
    tabular: FeatureMatrix,
    labels: npt.NDArray[np.float32],
    config: GNNConfig,
) -> FittedGNN:
    config.check_columns()
    columns = tuple(
        c
        for c in config.entity_columns
        if c in transactions.columns and transactions[c].notna().any()
    )
    node_types = [ENTITY_TYPES[c] for c in columns]
    relations = edge_types(node_types)
    table = transactions.assign(is_fraud=labels)
    state = GraphState(columns, config.history)
    state.append_frame(table.reset_index(drop=True), label_delay=config.label_delay)
    frame = normalise_transactions(table.reset_index(drop=True), columns)
    times = frame["event_time"]
    tab_scaler = Standardiser.fit(tabular.values)
    tab_values = tab_scaler.apply(tabular.values)

    windows: list[TrainingWindow] = []
    for start in _snapshot_times(times, config):
        end = start + pd.Timedelta(config.refresh_every)
        in_window = ((times >= start) & (times < end)).to_numpy(bool)
        if not in_window.any():
            continue
        snapshot = state.snapshot(start)
        rows = {
            ENTITY_TYPES[c]: snapshot.nodes[ENTITY_TYPES[c]].rows(frame[c][in_window])
            for c in columns
        }
        windows.append(TrainingWindow(snapshot, rows, tab_values[in_window], labels[in_window]))
    if not windows:
        raise ValueError("the training data is too short for one snapshot and one window")
    scaler = NodeScaler.fit([w.snapshot for w in windows])
    encoder, head = train(windows, scaler, node_types, relations, config)

    # Online, the first embeddings are those of the whole training history.
    latest = state.snapshot(times.max() + pd.Timedelta(microseconds=1))
    return FittedGNN(
        entity_columns=columns,
        tabular=tab_scaler,
        node_mean=dict(scaler.mean),
        node_scale=dict(scaler.scale),
        encoder_state=state_arrays(encoder),
        head=head_arrays(head),
        embeddings=_table(latest, embed(encoder, latest, scaler)),
    )


def recompute_embeddings(
    state: GraphState,
    as_of: datetime,
    *,
    encoder_state: Mapping[str, Floats32],
    node_mean: Mapping[str, Floats32],
    node_scale: Mapping[str, Floats32],
    config: GNNConfig,
    entity_columns: Sequence[str],
) -> EmbeddingTable:
    """The scheduled refresh: snapshot the graph state and run the encoder once."""
    if tuple(state.entity_columns) != tuple(entity_columns):
        raise ValueError(
            f"graph state tracks {state.entity_columns}, the model needs {tuple(entity_columns)}"
        )
    node_types = [ENTITY_TYPES[c] for c in entity_columns]
    snapshot = state.snapshot(as_of)
    in_dim = next(iter(node_mean.values())).shape[0]
    encoder = Encoder(edge_types(node_types), in_dim, config.hidden_dim, config.embedding_dim)
    load_state(encoder, encoder_state)
    encoder.eval()
    return _table(snapshot, embed(encoder, snapshot, NodeScaler(node_mean, node_scale)))


def _snapshot_times(times: pd.Series, config: GNNConfig) -> list[pd.Timestamp]:
    """Refresh boundaries at the end of the data, oldest first, each with some history."""
    end = times.max() + pd.Timedelta(microseconds=1)
    step = pd.Timedelta(config.refresh_every)
    earliest = times.min() + step
    starts = [end - step * k for k in range(config.train_snapshots, 0, -1)]
    return [s for s in starts if s >= earliest]


def _table(snapshot: GraphSnapshot, vectors: Mapping[str, Floats32]) -> EmbeddingTable:
    return EmbeddingTable(
        snapshot.as_of,
        {t: n.ids for t, n in snapshot.nodes.items()},
        {t: vectors[t].astype(np.float32) for t in snapshot.nodes},
    )
