"""Settings of the GNN layer: graph windows, model sizes, training budget."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from models.gnn.graph import ENTITY_TYPES, HUB_COLUMN


class GNNConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Transaction fields that become node types; absent or empty ones are dropped at fit.
    entity_columns: tuple[str, ...] = tuple(ENTITY_TYPES)
    # How far back a snapshot looks.
    history_days: float = Field(default=30.0, gt=0)
    # When a transaction's label becomes known (the handbook's protocol uses 7 days).
    label_delay_days: float = Field(default=7.0, ge=0)
    # Embeddings are recomputed this often online; training mimics the same staleness.
    refresh_every_hours: float = Field(default=24.0, gt=0)
    # Snapshots (refresh periods) at the end of the training data whose transactions
    # train the model, each scored with the embeddings of the snapshot before it.
    train_snapshots: int = Field(default=4, ge=1, le=60)
    hidden_dim: int = Field(default=32, ge=1, le=1024)
    embedding_dim: int = Field(default=16, ge=1, le=1024)
    head_hidden: int = Field(default=32, ge=1, le=1024)
    epochs: int = Field(default=40, ge=1, le=10_000)
    # After the joint epochs, the head alone trains on fixed embeddings, in mini-batches.
    head_epochs: int = Field(default=20, ge=0, le=10_000)
    head_batch_size: int = Field(default=1024, ge=1)
    learning_rate: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    # Share of training entities replaced by the cold-start entity, so the head also
    # learns what to do with cards, devices and IPs it has never seen.
    entity_dropout: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 0
    train_threads: int = Field(default=1, ge=1)

    @property
    def history(self) -> timedelta:
        return timedelta(days=self.history_days)

    @property
    def label_delay(self) -> timedelta:
        return timedelta(days=self.label_delay_days)

    @property
    def refresh_every(self) -> timedelta:
        return timedelta(hours=self.refresh_every_hours)

    def check_columns(self) -> None:
        unknown = [c for c in self.entity_columns if c not in ENTITY_TYPES]
        if unknown:
            raise ValueError(f"unknown entity columns {unknown}; known: {list(ENTITY_TYPES)}")
        if HUB_COLUMN not in self.entity_columns:
            raise ValueError(f"entity_columns must include {HUB_COLUMN!r}")
