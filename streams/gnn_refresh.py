"""Keeps the GNN layer of every engine in force fresh (``models/gnn/refresh.py``).

The worker hands every batch of transactions it scores and every batch of labels it
applies to :meth:`GnnRefresh.observe` / :meth:`observe_labels`; a timer calls
:meth:`refresh_due` in a thread, which recomputes the embeddings of each engine whose
refresh period of event time has passed (the encoder itself in a child process by
default, ``models/gnn/refresh_process.py``) and puts the refreshed layer in place. Putting
it in place is one dict assignment: a batch being decided at that moment uses either
the old or the new layer whole, both valid (the head and its calibration do not change;
only the embeddings, as training anticipated).

A model swapped in (new champion or challenger) gets its own refresher, starting empty:
it keeps the embeddings it was trained with until its state spans the snapshot window.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fraudstream.wire.schemas import LabelEvent, Transaction
from models.gnn.refresh import EmbeddingRefresher, compute_in_process
from models.gnn.refresh_process import ChildProcessEmbeddings
from models.gnn.scorer import GNNScorer

log = logging.getLogger(__name__)
GNN_LAYER = "gnn"


class GnnRefresh:
    """``engines()`` returns the engines in force (objects with a ``layers`` dict)."""

    def __init__(
        self, engines: Callable[[], Sequence[Any]], child: ChildProcessEmbeddings | None = None
    ) -> None:
        """``child``: run the encoder there (the worker's default, see
        :mod:`models.gnn.refresh_process`); without it, in this process."""
        self._engines = engines
        self._child = child
        self._refreshers: dict[int, tuple[Any, EmbeddingRefresher]] = {}
        self._lock = threading.Lock()
        self.refreshed = 0

    def _with_gnn(self) -> list[Any]:
        """The engines in force that have a GNN layer."""
        return [e for e in self._engines() if isinstance(e.layers.get(GNN_LAYER), GNNScorer)]

    def _current(self) -> list[tuple[Any, EmbeddingRefresher]]:
        live = self._with_gnn()
        with self._lock:
            keep = {id(e) for e in live}
            for key in [k for k in self._refreshers if k not in keep]:
                del self._refreshers[key]  # a model swapped out: its state goes with it
            for engine in live:
                if id(engine) not in self._refreshers:
                    self._refreshers[id(engine)] = (
                        engine,
                        EmbeddingRefresher(
                            engine.layers[GNN_LAYER],
                            compute=self._child or compute_in_process,
                        ),
                    )
            return list(self._refreshers.values())

    def warm_up(self) -> bool:
        """Import what a refresh runs on (torch, PyTorch Geometric) now, at start-up,
        when an engine in force has a GNN layer; whether it did. With a child process,
        the child is started and imports it (start-up does not wait), and this process
        never does.

        Why: serving never imports torch, so the first refresh did, mid-stream, in the
        refresh thread. Importing takes ~3 s on a quiet machine and 11 s was measured in
        a busy worker, with the interpreter lock held most of the time: every decision
        of those seconds waited (the paced benchmark's p95 went to 0.9-1.9 s)."""
        if not self._with_gnn():
            return False
        if self._child is not None:
            self._child.warm_up()
        else:
            importlib.import_module("models.gnn.training")
        return True

    def close(self) -> None:
        if self._child is not None:
            self._child.close()

    def observe(self, transactions: Sequence[Transaction]) -> None:
        for _, refresher in self._current():
            refresher.observe(transactions)

    def observe_labels(self, labels: Sequence[LabelEvent]) -> None:
        for _, refresher in self._current():
            refresher.observe_labels(labels)

    def refresh_due(self) -> int:
        """Refresh every engine that is due; how many were refreshed."""
        done = 0
        for engine, refresher in self._current():
            try:
                scorer = refresher.refresh()
            except Exception:  # a failed refresh keeps the embeddings in force
                log.exception("GNN embedding refresh failed; the current embeddings stay")
                continue
            if scorer is not None:
                engine.layers[GNN_LAYER] = scorer
                done += 1
                log.info("GNN embeddings refreshed: %s", scorer.version)
        self.refreshed += done
        return done
