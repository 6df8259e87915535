"""The online half of the GNN layer: embedding lookups plus a small head, in NumPy.

Per batch the scorer only maps each entity id to a row of a precomputed embedding
table (unseen and missing ids map to the cold-start row), concatenates the rows with
the standardised tabular features and runs a two-layer MLP. No graph work and no torch
happen on the scoring path; the embeddings are recomputed from ``GraphState`` by
``refresh()`` on a schedule. See ``models/gnn/README.md`` for the design and costs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.matrix import FeatureMatrix
from models.artifacts import (
    json_bytes,
    load_artifacts,
    npz_bytes,
    parse_json,
    parse_npz,
    save_artifacts,
)
from models.base import Scores, ScoringBatch
from models.gnn.config import GNNConfig
from models.gnn.graph import ENTITY_TYPES, GraphState, utc_timestamp
from models.tabular import Imputer, Standardiser, content_version, labels_array, training_matrix

KIND = "gnn"
PARAMS_FILE = "params.json"
WEIGHTS_FILE = "weights.npz"
EMBEDDINGS_FILE = "embeddings.npz"

Floats32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbeddingTable:
    """Per node type: entity ids and their embeddings; the last row is the cold entity."""

    as_of: datetime
    ids: Mapping[str, npt.NDArray[np.str_]]
    vectors: Mapping[str, npt.NDArray[np.float32]]
    _index: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    digest: str = field(default="", init=False)

    def __post_init__(self) -> None:
        content = hashlib.sha256()
        for node_type in sorted(self.ids):
            ids = self.ids[node_type]
            self._index[node_type] = {str(v): i for i, v in enumerate(ids.tolist())}
            content.update(node_type.encode())
            content.update(np.ascontiguousarray(ids).tobytes())
            content.update(np.ascontiguousarray(self.vectors[node_type]).tobytes())
        object.__setattr__(self, "digest", content.hexdigest())

    def lookup(self, node_type: str, values: npt.NDArray[np.object_]) -> npt.NDArray[np.int64]:
        index = self._index[node_type]
        cold = len(index)
        return np.fromiter((index.get(v, cold) for v in values), np.int64, len(values))


class GNNScorer:
    """Fraud probability from entity embeddings of the transaction graph."""

    name: ClassVar[str] = "gnn"

    def __init__(
        self,
        *,
        config: GNNConfig,
        entity_columns: Sequence[str],
        feature_names: Sequence[str],
        tabular: Standardiser,
        node_mean: Mapping[str, Floats32],
        node_scale: Mapping[str, Floats32],
        encoder_state: Mapping[str, Floats32],
        head: Mapping[str, Floats32],
        embeddings: EmbeddingTable,
        model_version: str,
    ) -> None:
        self.config = config
        self.entity_columns = tuple(entity_columns)
        self.node_types = tuple(ENTITY_TYPES[c] for c in self.entity_columns)
        self.feature_names = tuple(feature_names)
        self._tabular = tabular
        self._node_mean = dict(node_mean)
        self._node_scale = dict(node_scale)
        self._encoder_state = dict(encoder_state)
        self._head = dict(head)
        # Float64 for the head: scores then do not depend on how rows are batched.
        self._w1 = head["w1"].astype(np.float64)
        self._b1 = head["b1"].astype(np.float64)
        self._w2 = head["w2"].astype(np.float64)
        self._b2 = head["b2"].astype(np.float64)
        self.embeddings = embeddings
        self.model_version = model_version

    @property
    def head_weights(self) -> dict[str, Floats32]:
        return dict(self._head)

    @property
    def version(self) -> str:
        # Scores change when embeddings are refreshed, so the version names them too.
        table = self.embeddings
        return f"{self.model_version}@{table.as_of:%Y%m%dT%H%M%SZ}.{table.digest[:8]}"

    # --- scoring -----------------------------------------------------------------------

    def head_input(self, batch: ScoringBatch) -> npt.NDArray[np.float64]:
        parts: list[npt.NDArray[np.float64]] = []
        flags: list[npt.NDArray[np.float64]] = []
        for column, node_type in zip(self.entity_columns, self.node_types, strict=True):
            rows = self.embeddings.lookup(node_type, batch.field(column))
            vectors = self.embeddings.vectors[node_type]
            parts.append(vectors[rows].astype(np.float64))
            flags.append((rows != len(vectors) - 1).astype(np.float64)[:, None])
        tabular = self._tabular.apply(batch.features.select(self.feature_names).values)
        return np.hstack([*parts, *flags, tabular.astype(np.float64)])

    def score(self, batch: ScoringBatch) -> Scores:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        hidden = np.maximum(self.head_input(batch) @ self._w1 + self._b1, 0.0)
        logits = (hidden @ self._w2 + self._b2).reshape(-1)
        # tanh form of the sigmoid: no overflow warning for large negative logits.
        return np.clip(0.5 * (1.0 + np.tanh(0.5 * logits)), 0.0, 1.0)

    # --- training and refresh (offline; these import torch) ------------------------------

    @classmethod
    def fit(
        cls,
        transactions: pd.DataFrame,
        features: FeatureMatrix | pd.DataFrame | None = None,
        labels: Any = None,
        *,
        feature_names: Sequence[str] | None = None,
        config: GNNConfig | None = None,
        version: str | None = None,
    ) -> GNNScorer:
        """Train on a transaction table (event_time, amount, entity ids) and its labels
        (``labels`` or the table's ``is_fraud``), plus row-aligned tabular features."""
        # Imported here so that scoring processes never load torch.
        from models.gnn.training import fit_gnn

        config = config or GNNConfig()
        y = labels_array(
            labels if labels is not None else transactions["is_fraud"], len(transactions)
        )
        if features is None:
            tab = FeatureMatrix.empty((), len(transactions))
        else:
            tab = training_matrix(features, feature_names)
        fitted = fit_gnn(transactions, tab, y, config)
        model_version = version or content_version(
            "gnn",
            *(
                np.ascontiguousarray(a).tobytes()
                for a in (*fitted.encoder_state.values(), *fitted.head.values())
            ),
        )
        return cls(
            config=config,
            entity_columns=fitted.entity_columns,
            feature_names=tab.names,
            tabular=fitted.tabular,
            node_mean=fitted.node_mean,
            node_scale=fitted.node_scale,
            encoder_state=fitted.encoder_state,
            head=fitted.head,
            embeddings=fitted.embeddings,
            model_version=model_version,
        )

    def refresh(self, state: GraphState, as_of: datetime) -> GNNScorer:
        """A scorer with embeddings recomputed from ``state`` as of ``as_of``."""
        from models.gnn.training import recompute_embeddings  # torch: offline only

        table = recompute_embeddings(
            state,
            utc_timestamp(as_of).to_pydatetime(),
            encoder_state=self._encoder_state,
            node_mean=self._node_mean,
            node_scale=self._node_scale,
            config=self.config,
            entity_columns=self.entity_columns,
        )
        return self._with_embeddings(table)

    def _with_embeddings(self, table: EmbeddingTable) -> GNNScorer:
        return GNNScorer(
            config=self.config,
            entity_columns=self.entity_columns,
            feature_names=self.feature_names,
            tabular=self._tabular,
            node_mean=self._node_mean,
            node_scale=self._node_scale,
            encoder_state=self._encoder_state,
            head=self._head,
            embeddings=table,
            model_version=self.model_version,
        )

    # --- persistence -------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        params = {
            "config": self.config.model_dump(mode="json"),
            "entity_columns": list(self.entity_columns),
            "feature_names": list(self.feature_names),
            "model_version": self.model_version,
            "embeddings_as_of": self.embeddings.as_of.isoformat(),
        }
        weights: dict[str, npt.NDArray[Any]] = {
            "tabular_medians": self._tabular.imputer.medians,
            "tabular_mean": self._tabular.mean,
            "tabular_scale": self._tabular.scale,
        }
        weights |= {f"head/{k}": v for k, v in self._head.items()}
        weights |= {f"encoder/{k}": v for k, v in self._encoder_state.items()}
        weights |= {f"node_mean/{k}": v for k, v in self._node_mean.items()}
        weights |= {f"node_scale/{k}": v for k, v in self._node_scale.items()}
        embeddings: dict[str, npt.NDArray[Any]] = {}
        for node_type in self.node_types:
            embeddings[f"ids/{node_type}"] = self.embeddings.ids[node_type]
            embeddings[f"vectors/{node_type}"] = self.embeddings.vectors[node_type]
        save_artifacts(
            directory,
            KIND,
            {
                PARAMS_FILE: ("json", json_bytes(params)),
                WEIGHTS_FILE: ("npz", npz_bytes(weights)),
                EMBEDDINGS_FILE: ("npz", npz_bytes(embeddings)),
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        files = load_artifacts(directory, KIND)
        params = parse_json(files[PARAMS_FILE], PARAMS_FILE)
        weights = parse_npz(files[WEIGHTS_FILE], WEIGHTS_FILE)
        stored = parse_npz(files[EMBEDDINGS_FILE], EMBEDDINGS_FILE)
        config = GNNConfig.model_validate(params["config"])
        columns = [str(c) for c in params["entity_columns"]]
        node_types = [ENTITY_TYPES[c] for c in columns]
        table = EmbeddingTable(
            datetime.fromisoformat(str(params["embeddings_as_of"])),
            {t: stored[f"ids/{t}"] for t in node_types},
            {t: stored[f"vectors/{t}"].astype(np.float32) for t in node_types},
        )
        return cls(
            config=config,
            entity_columns=columns,
            feature_names=[str(n) for n in params["feature_names"]],
            tabular=Standardiser(
                Imputer(weights["tabular_medians"]),
                weights["tabular_mean"],
                weights["tabular_scale"],
            ),
            node_mean=_prefixed(weights, "node_mean/"),
            node_scale=_prefixed(weights, "node_scale/"),
            encoder_state=_prefixed(weights, "encoder/"),
            head=_prefixed(weights, "head/"),
            embeddings=table,
            model_version=str(params["model_version"]),
        )


def _prefixed(arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> dict[str, Floats32]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
