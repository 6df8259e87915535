"""A design measured beside the engine, not the engine: the engine worker with its
decider (feature lookup, layers, routing, deadline) in a child process of its own, so
the decision step no longer shares an interpreter lock with Faust's event loop.

    FRAUDSTREAM__... python -m benchmarks.child_decider_worker

Everything else is the real worker's (``streams.worker.build_worker_app``: the scoring
agent, dedupe, labels, outputs). The child builds the same decider from the same
settings (``streams.worker.build_scoring``) and refreshes its GNN embeddings on the
worker's schedule; transactions go to it and decisions come back over a pipe as
msgpack (no pickling). What a production version would still need, and this
benchmark leaves out: labels reaching the child's GNN (this worker's labels go to the
feature store only), the child's layer metrics and registry watcher, and restarting
a child that died (here the scoring agent fails and Faust restarts it, without a
child).
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from multiprocessing.connection import Connection

import faust
import msgspec

from fraudstream.metrics import EngineMetrics, PrometheusEngineHooks, PrometheusStreamHooks
from fraudstream.settings import load_settings
from fraudstream.wire import Decision, Transaction
from streams.scoring import NoHooks, Outgoing
from streams.topics import ensure_topics
from streams.worker import build_scoring, build_worker_app, freeze_startup_objects


class _Request(msgspec.Struct):
    transactions: list[Transaction]
    now: datetime


class _Reply(msgspec.Struct):
    decisions: list[Decision]
    shadow: list[tuple[bytes | None, bytes]]  # (key, value) of each shadow decision


def _serve(conn: Connection, env: Mapping[str, str]) -> None:
    """The child: the worker's decider, one batch per request, until the pipe closes."""
    settings = load_settings(None, env)
    parts = build_scoring(settings, NoHooks(), None)
    if parts.gnn is not None:
        parts.gnn.warm_up()
    freeze_startup_objects()
    decode = msgspec.msgpack.Decoder(_Request).decode
    encode = msgspec.msgpack.Encoder().encode
    decider, gnn = parts.decider, parts.gnn

    async def refresh_embeddings() -> None:  # the worker's timer, here
        while gnn is not None and settings.models.gnn_refresh_check_s > 0:
            await asyncio.sleep(settings.models.gnn_refresh_check_s)
            await asyncio.to_thread(gnn.refresh_due)

    async def serve() -> None:
        refresher = asyncio.ensure_future(refresh_embeddings())
        try:
            while True:
                try:  # off the loop: the decider's late work still needs it
                    request = decode(await asyncio.to_thread(conn.recv_bytes))
                except EOFError:
                    return
                decisions = await decider.decide(request.transactions, request.now)
                shadow = [(o.key, o.value) for o in decider.take_shadow()]
                conn.send_bytes(encode(_Reply(decisions, shadow)))
        finally:
            refresher.cancel()

    try:
        asyncio.run(serve())
    finally:
        if gnn is not None:
            gnn.close()


class ChildDecider:
    """``streams.scoring.BatchDecider`` answered by a child process (:func:`_serve`).
    The scoring agent decides one batch at a time, so one pipe serves it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        context = mp.get_context("spawn")  # a fresh interpreter: nothing of Faust's
        self._conn, child = context.Pipe()
        # Not a daemon: daemons may not start processes, and the GNN refresh runs in one.
        # The child stops when the pipe closes, which the kernel does if this one dies.
        self._process = context.Process(target=_serve, args=(child, dict(env)))
        self._process.start()
        child.close()
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(_Reply).decode
        self._shadow: list[Outgoing] = []

    async def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        request = self._encode(_Request(list(transactions), now))

        def ask() -> bytes:
            self._conn.send_bytes(request)
            return self._conn.recv_bytes()

        reply = self._decode(await asyncio.to_thread(ask))
        self._shadow = [Outgoing(key, value) for key, value in reply.shadow]
        return reply.decisions

    def take_shadow(self) -> list[Outgoing]:
        taken, self._shadow = self._shadow, []
        return taken

    def close(self) -> None:
        self._conn.close()  # the child's recv ends: it stops
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()


def main() -> None:
    # The benchmark's entry point, like the CLI's root: settings loaded once, here.
    settings = load_settings(None, os.environ)
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = EngineMetrics()
    parts = build_scoring(settings, PrometheusStreamHooks(metrics), PrometheusEngineHooks(metrics))
    if parts.gnn is not None:
        parts.gnn.close()  # the child refreshes its own engines' embeddings
    decider = ChildDecider(os.environ)
    # The worker's parts with the child's decider: a BatchDecider, not a RoutedDecider.
    parts = dataclasses.replace(parts, decider=decider, gnn=None)
    asyncio.run(ensure_topics(settings.kafka))
    if settings.worker.metrics_port:
        metrics.serve(settings.worker.metrics_port)
    app = build_worker_app(settings, metrics, parts)
    worker = faust.Worker(app, loglevel=settings.worker.log_level.lower(), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        decider.close()


if __name__ == "__main__":
    main()
