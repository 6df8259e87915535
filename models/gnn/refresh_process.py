"""The GNN embedding refresh in a child process, so that decisions never wait for it.

Why: in the worker, a refresh (graph snapshot in pandas, the encoder in torch) held the
interpreter lock and both cores for ~0.2 s on a quiet machine and 0.9-1.1 s under load
(measured, 60,000 payments in the state); paced at 1,100 decisions/s the decisions
queued behind it and, with little spare capacity, the backlog stayed (p50 went from
~70 ms to ~1.4 s in one run). It happens once per refresh period, every period.

How: the worker writes the graph state (Parquet) and the layer (its own artefact
format: JSON and NumPy arrays, never pickle) into a scratch directory; the child loads
both, runs the encoder once and saves the refreshed layer beside them; the worker loads
that back and swaps it in. Only the call and its paths cross the process boundary. The
child is started once (``spawn``: a clean interpreter that shares no threads or sockets
with the worker), imports torch while the worker serves, and runs at the lowest CPU
priority with torch on one thread, so that the cores stay with the decisions. A child
that dies fails that refresh (the embeddings in force stay, as with any failed refresh)
and the next one starts a new child.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from pathlib import Path

from models.gnn.graph import GraphState
from models.gnn.scorer import GNNScorer

_LAYER, _STATE, _REFRESHED = "layer", "state.parquet", "refreshed"


class ChildProcessEmbeddings:
    """A :data:`models.gnn.refresh.ComputeEmbeddings` that runs in a child process."""

    def __init__(
        self, *, threads: int = 1, scratch: Path | None = None, timeout_s: float = 600.0
    ) -> None:
        self._threads = threads
        self._scratch = scratch
        self._timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.completed = 0  # refreshes the child ran to the end

    def warm_up(self) -> Future[bool]:
        """Start the child, which imports torch now rather than at the first refresh;
        the future is done once it has. Start-up does not wait for it: a worker that
        replaces a failed one should take its partitions as soon as it can, and the
        first refresh is a check interval away."""
        return self._executor().submit(_ready)

    def __call__(self, scorer: GNNScorer, state: GraphState, as_of: datetime) -> GNNScorer:
        if self._scratch is not None:
            self._scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="gnn-refresh-", dir=self._scratch) as tmp:
            work = Path(tmp)
            scorer.save(work / _LAYER)
            state.write_parquet(work / _STATE)
            try:
                self._executor().submit(
                    _refresh_in_child,
                    str(work),
                    as_of.isoformat(),
                    list(state.entity_columns),
                    state.history.total_seconds(),
                ).result(timeout=self._timeout_s)
            except BrokenProcessPool:
                self.close()  # the child died: the next refresh starts another
                raise
            refreshed = GNNScorer.load(work / _REFRESHED)
            self.completed += 1
            return refreshed

    def close(self) -> None:
        """Stop the child now, also mid-refresh or mid-import (a refresh waiting on it
        fails, and the embeddings in force stay). Waiting instead held a stopping
        worker for as long as the child took: at the lowest priority on a busy machine
        that was over 30 s, while the interpreter's exit waited for it."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor can only wait for its children before Python 3.14's
        # terminate_workers(); its process table is the one way to stop them earlier.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(self._threads,),
                )
            return self._pool


# --- in the child ------------------------------------------------------------------------


def _start_child(threads: int) -> None:
    _exit_with_parent()
    # Background work: the lowest CPU priority, so that importing torch and running the
    # encoder only take what the decisions, Kafka and Redis leave (four workers starting
    # together on two cores each had a child importing torch: their drain fell from
    # ~2,300-2,800 to 1,326 decisions/s at normal priority).
    with contextlib.suppress(OSError):  # not permitted here: the worker's priority
        os.nice(19)
    import torch

    import models.gnn.training  # noqa: F401  (the encoder's imports, once)

    torch.set_num_threads(threads)


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """End this child once its worker is gone (killed, say): the pool would notice only
    after the work in hand, and importing torch at the lowest priority on a busy
    machine takes minutes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _ready() -> bool:
    return True


def _refresh_in_child(work: str, as_of: str, entity_columns: list[str], history_s: float) -> None:
    folder = Path(work)
    scorer = GNNScorer.load(folder / _LAYER)
    state = GraphState.read_parquet(folder / _STATE, entity_columns, timedelta(seconds=history_s))
    scorer.refresh(state, datetime.fromisoformat(as_of)).save(folder / _REFRESHED)
