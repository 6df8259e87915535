"""The graph layer: entity embeddings from the transaction graph, scored per batch.

Importing this package does not import torch; only fitting and refreshing do.
"""

from models.gnn.config import GNNConfig
from models.gnn.graph import ENTITY_TYPES, GraphSnapshot, GraphState
from models.gnn.scorer import EmbeddingTable, GNNScorer

__all__ = [
    "ENTITY_TYPES",
    "EmbeddingTable",
    "GNNConfig",
    "GNNScorer",
    "GraphSnapshot",
    "GraphState",
]
