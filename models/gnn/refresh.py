"""The scheduled refresh of the GNN layer's embeddings, online.

Scoring only looks embeddings up (``models/gnn/scorer.py``); the graph itself moves on
as payments arrive. :class:`EmbeddingRefresher` keeps a :class:`GraphState` fed with
every transaction the worker decides and every label it learns, and every
``config.refresh_every`` of *event time* produces a scorer whose embeddings are
recomputed from that state (the encoder's one forward pass; seconds, off the event loop).
Training scores each period with the snapshot taken at its start, so serving with the
same refresh period reproduces what the head was trained on.

Cold start: a worker that has just started holds only the traffic it has seen, and a
snapshot of a few minutes of it would make every entity look new. Until the state spans
``min_history`` (by default the whole snapshot window), refreshing is held back and the
embeddings the bundle was trained with keep serving.

Thread safety: ``observe*`` run on the event loop between batches and ``refresh`` in a
worker thread. A lock guards the state; the refresh copies it under the lock and runs the
encoder on the copy, so arriving transactions never wait for the encoder. The caller
swaps the returned scorer into the engine between batches, as it does any model change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from fraudstream.wire.schemas import LabelEvent, Transaction
from models.gnn.graph import GraphState
from models.gnn.scorer import GNNScorer

_FLUSH_EVERY = 50_000


# (scorer, graph state, as of) -> the scorer with embeddings recomputed from the state.
ComputeEmbeddings = Callable[[GNNScorer, GraphState, datetime], GNNScorer]


def compute_in_process(scorer: GNNScorer, state: GraphState, as_of: datetime) -> GNNScorer:
    return scorer.refresh(state, as_of)


class EmbeddingRefresher:
    def __init__(
        self,
        scorer: GNNScorer,
        *,
        min_history: timedelta | None = None,
        state: GraphState | None = None,
        compute: ComputeEmbeddings = compute_in_process,
    ) -> None:
        """``compute`` runs the encoder: here, or in a child process
        (:class:`models.gnn.refresh_process.ChildProcessEmbeddings`)."""
        self.config = scorer.config
        self._compute = compute
        self._scorer = scorer
        self._state = (
            state if state is not None else GraphState(scorer.entity_columns, scorer.config.history)
        )
        self._min_history = min_history if min_history is not None else scorer.config.history
        self._lock = threading.Lock()
        # Transactions not yet in the state: building a DataFrame per scored batch cost
        # as much as the feature store itself, so they are added in bulk when needed.
        self._pending: list[Transaction] = []
        # Labels not yet in the state, likewise: recording labels rewrites the state's
        # frame (O(state)): ~2 s per labels batch with 300,000 transactions held,
        # measured, every few seconds while chargebacks flow. Applied at the refresh.
        self._pending_labels: list[LabelEvent] = []
        self._first: datetime | None = None
        self._newest: datetime | None = None
        self.last_refresh: datetime = scorer.embeddings.as_of
        self.refreshes = 0

    @property
    def scorer(self) -> GNNScorer:
        return self._scorer

    def observe(self, transactions: Sequence[Transaction]) -> None:
        if not transactions:
            return
        times = [t.event_time for t in transactions]
        with self._lock:
            self._pending.extend(transactions)
            if len(self._pending) >= _FLUSH_EVERY:
                self._flush()
            low, high = min(times), max(times)
            self._first = low if self._first is None else min(self._first, low)
            self._newest = high if self._newest is None else max(self._newest, high)

    def observe_labels(self, labels: Sequence[LabelEvent]) -> None:
        if not labels:
            return
        with self._lock:
            self._pending_labels.extend(labels)
            if len(self._pending_labels) >= _FLUSH_EVERY:
                self._flush()

    def due(self) -> bool:
        """A refresh period of event time has passed and the state holds enough history."""
        with self._lock:
            if self._first is None or self._newest is None:
                return False
            enough = self._newest - self._first >= self._min_history
            return enough and self._newest - self.last_refresh >= self.config.refresh_every

    def refresh(self) -> GNNScorer | None:
        """A scorer with embeddings as of the newest event seen (``None`` if not due).

        Transactions older than the snapshot window are pruned from the state first, so
        its memory stays bounded."""
        if not self.due():
            return None
        with self._lock:
            assert self._newest is not None
            as_of = self._newest
            self._flush()
            self._state.prune(as_of - self.config.history)
            state = self._state.copy()
        refreshed = self._compute(self._scorer, state, as_of)
        with self._lock:
            self._scorer = refreshed
            self.last_refresh = as_of
            self.refreshes += 1
        return refreshed

    def state_size(self) -> int:
        """Transactions held (bounded by the snapshot window once pruned)."""
        with self._lock:
            self._flush()
            return len(self._state)

    def _flush(self) -> None:
        """Pending transactions, then pending labels (a label needs its transaction in
        the state), into the state in bulk."""
        if self._pending:
            self._state.append_transactions(self._pending)
            self._pending = []
        if self._pending_labels:
            labels, self._pending_labels = self._pending_labels, []
            self._state.record_labels(
                [label.transaction_id for label in labels],
                [int(label.is_fraud) for label in labels],
                [label.label_time for label in labels],
            )
