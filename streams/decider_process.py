"""The scoring agent's decider, answered by a child process (``worker.decider_process``).

:class:`DeciderProcess` is a ``streams.scoring.BatchDecider``: the agent hands it a batch
and gets one decision per transaction, as from the in-process ``RoutedDecider``. The
child (:mod:`streams.decider_child`) holds the engines, the registry watcher and the GNN;
this side keeps what a payment pipeline relies on even when the child misbehaves:

- **the deadline**: the child decides within ``scoring.deadline_ms`` counted from when
  the batch was taken; this side waits that long plus a grace for the pipe
  (:data:`GRACE_SHARE`), then emits the deadline's defaults itself (flagged
  ``timeout_default``), so a stalled child cannot stall the stream;
- **a child that died or stalled**: a child that exits (a crash, the OOM killer) or
  leaves a request unanswered for ``worker.decider_stall_s`` is replaced, in the
  background. Until the new one is ready, batches get the engine-error default
  (degraded, reason ``engine_error``), and each restart is counted
  (``fraudstream_decider_restarts_total``);
- **labels**: forwarded to the child's GNN (:meth:`observe_labels`); those that arrive
  while a child is being replaced are held (up to :data:`LABELS_HELD_MAX`) and sent to
  the new one before its first batch;
- **metrics**: the child's layer, breaker and feature-store reports ride with each
  reply and are replayed here on the worker's own hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec

from fraudstream.errors import DeciderProcessDied, DeciderStartError, ReportedError
from fraudstream.metrics import PrometheusEngineHooks
from fraudstream.settings import Settings
from fraudstream.wire import Decision, LabelEvent, Transaction
from models.breaker import BreakerState
from models.decide import LayerReport
from models.decisions import fallback_decisions
from streams.decider_child import (
    Build,
    Decided,
    DecideRequest,
    LabelsRequest,
    Ready,
    StartFailed,
    StopRequest,
    ToParent,
    build_real,
    serve,
)
from streams.scoring import Outgoing, StreamHooks
from training.bundle import EngineInfo

log = logging.getLogger(__name__)

# How much longer than the deadline this side waits for a reply: the pipe both ways and
# the child's loop. Past it, the deadline's defaults are emitted here.
GRACE_SHARE = 0.25
RESTART_BACKOFF_S = 5.0  # between attempts when a new child fails to start
# Labels held for the next child while one is replaced (the oldest go first past it): a
# restart takes seconds, and chargebacks arrive at a fraction of the transaction rate.
LABELS_HELD_MAX = 50_000


@dataclass
class _Child:
    """One child process and its end of the pipe; replies are read by a thread."""

    process: BaseProcess
    conn: Connection
    ready: Ready
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    gone: bool = False  # exited, or its pipe broke
    why_gone: str = "died"  # or "stalled": killed here (the restarts metric's reason)
    unanswered_since: float | None = None  # monotonic time of the oldest open request

    def send(self, data: bytes) -> None:
        with self.send_lock:  # the scoring and the labels agents share the pipe
            self.conn.send_bytes(data)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Ask it to finish, kill it if it does not in ``timeout_s``; its exit code."""
        if self.send_lock.acquire(timeout=timeout_s):  # a send stuck on a full pipe
            try:
                with contextlib.suppress(OSError):  # one that is gone reads nothing
                    self.conn.send_bytes(msgspec.msgpack.encode(StopRequest()))
            finally:
                self.send_lock.release()
        self.process.join(timeout_s)
        if self.process.is_alive():  # it ignores SIGTERM (see decider_child.serve)
            self.process.kill()
            self.process.join(timeout_s)
        self.conn.close()
        return self.process.exitcode


def replay(
    events: Sequence[Any], engine: PrometheusEngineHooks | None, stream: StreamHooks
) -> None:
    """The child's hook calls (``streams.decider_child.HookEvents``), made here."""
    for name, *args in events:
        if name == "pipeline_failed":
            stream.pipeline_failed(ReportedError(*args))
        elif engine is None:
            continue
        elif name == "layer_result":
            layer, status, elapsed_ms, state, rows, error = args
            engine.layer_result(
                LayerReport(layer, status, elapsed_ms, BreakerState(state), rows, error)
            )
        elif name == "breaker_changed":
            engine.breaker_changed(*args)
        elif name == "feature_lookup":
            engine.feature_lookup(*args)
        elif name == "feature_store_error":
            engine.feature_store_error(ReportedError(*args))
        elif name == "engine_error":
            engine.engine_error(ReportedError(*args))
        else:  # a child newer than this parent: say so, lose nothing else
            log.warning("decider child reported an unknown event %r", name)


class DeciderProcess:
    """A ``BatchDecider`` whose decisions are made in a child process (module doc).
    Constructing it starts the child and waits until its engine is loaded: a start-up
    failure (no champion, a mismatched bundle) raises :class:`DeciderStartError`."""

    def __init__(
        self,
        settings: Settings,
        stream_hooks: StreamHooks,
        engine_hooks: PrometheusEngineHooks | None = None,
        *,
        build: Build = build_real,
    ) -> None:
        self._settings = settings
        self._stream_hooks = stream_hooks
        self._engine_hooks = engine_hooks
        self._build = build
        self._deadline_s = settings.scoring.deadline_ms / 1000.0
        self._stall_s = settings.worker.decider_stall_s
        self._encode = msgspec.msgpack.Encoder().encode
        self._seq = itertools.count()
        self._pending: dict[int, asyncio.Future[Decided]] = {}
        self._pending_lock = threading.Lock()
        self._shadow: list[Outgoing] = []
        self._restarting = threading.Lock()
        # Guards which child labels go to: the labels agent's thread sends while the
        # restart thread swaps the child in, and no label may fall between the two.
        self._labels_lock = threading.Lock()
        self._labels_held: deque[LabelEvent] = deque(maxlen=LABELS_HELD_MAX)
        self._labels_dropped = 0
        self._closed = False
        self._child: _Child | None = self._spawn()
        self.info = EngineInfo.from_json(self._child.ready.info)
        self.source = self._child.ready.source
        self._model_version = self._child.ready.model_version

    # --- the BatchDecider ---------------------------------------------------------

    async def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        taken_at = time.time()
        child = self._child
        if child is None or child.gone:
            self._restart_in_background(child.why_gone if child is not None else "died")
            self._stream_hooks.pipeline_failed(DeciderProcessDied(self._exit_code(child)))
            return self._defaults(transactions, now, timed_out=False)
        loop = asyncio.get_running_loop()
        seq = next(self._seq)
        answered: asyncio.Future[Decided] = loop.create_future()
        with self._pending_lock:
            self._pending[seq] = answered
            if child.unanswered_since is None:
                child.unanswered_since = time.monotonic()
        request = self._encode(DecideRequest(seq, list(transactions), now, taken_at))
        try:
            async with asyncio.timeout(self._deadline_s * (1.0 + GRACE_SHARE)):
                await asyncio.to_thread(child.send, request)
                reply = await answered
        except TimeoutError:
            self._forget(seq)
            if self._engine_hooks is not None:
                self._engine_hooks.decider_late()
            self._check_stalled(child)
            return self._defaults(transactions, now, timed_out=True)
        except (DeciderProcessDied, OSError) as exc:  # it died with the batch in hand
            self._forget(seq)
            self._stream_hooks.pipeline_failed(exc)
            return self._defaults(transactions, now, timed_out=False)
        self._shadow = [Outgoing(key, value) for key, value in reply.shadow]
        return reply.decisions

    def take_shadow(self) -> list[Outgoing]:
        taken, self._shadow = self._shadow, []
        return taken

    def observe_labels(self, labels: Sequence[LabelEvent]) -> None:
        """Forward labels to the child's GNN (called from the labels agent's thread);
        held for the next child while one is being replaced."""
        if not labels or self._closed:
            return
        with self._labels_lock:
            child = self._child
            if child is None or child.gone or not self._send_labels(child, labels):
                self._hold(labels)

    def _send_labels(self, child: _Child, labels: Sequence[LabelEvent]) -> bool:
        try:
            # msgspec's module-level encode: this runs on the labels agent's (or the
            # restart) thread, beside the scoring agent's use of self._encode.
            child.send(msgspec.msgpack.encode(LabelsRequest(list(labels))))
        except OSError:
            child.gone = True
            return False
        return True

    def _hold(self, labels: Sequence[LabelEvent]) -> None:
        room = LABELS_HELD_MAX - len(self._labels_held)
        self._labels_dropped += max(0, len(labels) - room)
        self._labels_held.extend(labels)

    def _swap_in(self, child: _Child) -> None:
        """Make ``child`` the one that decides, after sending it the labels held."""
        with self._labels_lock:
            held = list(self._labels_held)
            self._labels_held.clear()
            if held and not self._send_labels(child, held):
                self._hold(held)  # it is gone already: the next one gets them
            if self._labels_dropped:
                log.warning(
                    "%d labels arrived while the decider child was replaced, past the "
                    "%d held for the next one: its GNN misses the oldest of them",
                    self._labels_dropped,
                    LABELS_HELD_MAX,
                )
                self._labels_dropped = 0
            self._child = child

    @property
    def pid(self) -> int | None:
        """The child's process id (None while one is being started)."""
        child = self._child
        return child.process.pid if child is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> int | None:
        """Stop the child (it finishes the batch in hand); its exit code."""
        self._closed = True
        child, self._child = self._child, None
        return child.stop() if child is not None else None

    # --- the child ------------------------------------------------------------------

    def _spawn(self) -> _Child:
        context = mp.get_context("spawn")  # a fresh interpreter: nothing of Faust's
        conn, theirs = context.Pipe()
        # Not a daemon: daemons may not start processes, and the GNN refresh runs in
        # one. The child stops when the pipe closes, which the kernel does if we die.
        process = context.Process(
            target=serve, args=(theirs, self._settings, self._build), name="fraudstream-decider"
        )
        process.start()
        theirs.close()
        first = self._first_message(conn, process)
        if isinstance(first, StartFailed):
            process.join(10)
            raise DeciderStartError(first.kind, first.message)
        child = _Child(process, conn, first)
        threading.Thread(
            target=self._read, args=(child,), name="decider-reader", daemon=True
        ).start()
        return child

    def _first_message(self, conn: Connection, process: BaseProcess) -> Ready | StartFailed:
        timeout_s = self._settings.worker.decider_start_timeout_s
        if not conn.poll(timeout_s):
            process.terminate()
            raise DeciderStartError("timeout", f"no engine loaded within {timeout_s} s")
        try:
            message: ToParent = msgspec.msgpack.Decoder(ToParent).decode(conn.recv_bytes())
        except EOFError:
            process.join(10)
            raise DeciderStartError("exit", f"the child exited ({process.exitcode})") from None
        if isinstance(message, Decided):
            raise DeciderStartError("protocol", "a decision before the engine was ready")
        return message

    def _read(self, child: _Child) -> None:
        """The reader thread: replays each reply's events and hands the reply to the
        batch waiting for it (one that gave up on it drops it)."""
        decode = msgspec.msgpack.Decoder(ToParent).decode
        try:
            while True:
                reply = decode(child.conn.recv_bytes())
                if not isinstance(reply, Decided):
                    continue
                replay(reply.events, self._engine_hooks, self._stream_hooks)
                self._model_version = reply.champion_version
                with self._pending_lock:
                    waiting = self._pending.pop(reply.seq, None)
                    child.unanswered_since = None if not self._pending else time.monotonic()
                if waiting is not None:
                    waiting.get_loop().call_soon_threadsafe(_settle, waiting, reply, None)
        except (EOFError, OSError):
            pass
        child.gone = True
        # Closing, stop() reaps it: a second thread waiting for (or polling) the same
        # process races it, and the loser sees no exit code at all.
        closing = self._closed
        if not closing:
            child.process.join(1.0)  # reaped, for its exit code
        died = DeciderProcessDied(None if closing else self._exit_code(child))
        with self._pending_lock:
            waiting_all, self._pending = list(self._pending.values()), {}
        for waiting in waiting_all:
            waiting.get_loop().call_soon_threadsafe(_settle, waiting, None, died)
        if not closing:
            log.error("%s; starting another", died)
            self._restart_in_background(child.why_gone)

    def _check_stalled(self, child: _Child) -> None:
        since = child.unanswered_since
        if since is not None and time.monotonic() - since > self._stall_s and not child.gone:
            log.error(
                "the decider's child answered nothing for %.1f s; replacing it", self._stall_s
            )
            child.why_gone = "stalled"
            child.gone = True
            child.process.kill()  # its pipe then breaks: the reader thread restarts it

    def _restart_in_background(self, reason: str) -> None:
        if self._closed or not self._restarting.acquire(blocking=False):
            return  # one restart at a time
        threading.Thread(
            target=self._restart, args=(reason,), name="decider-restart", daemon=True
        ).start()

    def _restart(self, reason: str) -> None:
        try:
            old = self._child
            if old is not None and old.gone is False:
                return
            if old is not None:
                old.stop(timeout_s=1.0)
            while not self._closed:
                try:
                    child = self._spawn()
                except Exception as exc:  # e.g. the registry unreachable: try again
                    log.error("a new decider child failed to start: %s", exc)
                    time.sleep(RESTART_BACKOFF_S)
                    continue
                self._swap_in(child)
                if self.closed:  # closed while it started: close() saw no child
                    self._child = None
                    child.stop()
                    return
                if self._engine_hooks is not None:
                    self._engine_hooks.decider_restarted(reason)
                log.warning("a new decider child is ready (engine %s)", child.ready.source)
                return
        finally:
            self._restarting.release()

    # --- helpers --------------------------------------------------------------------

    def _forget(self, seq: int) -> None:
        with self._pending_lock:
            self._pending.pop(seq, None)

    def _defaults(
        self, transactions: Sequence[Transaction], now: datetime, *, timed_out: bool
    ) -> list[Decision]:
        return fallback_decisions(
            transactions,
            self._settings.scoring,
            now,
            timed_out=timed_out,
            model_version=self._model_version,
        )

    @staticmethod
    def _exit_code(child: _Child | None) -> int | None:
        return None if child is None else child.process.exitcode


def _settle(
    future: asyncio.Future[Decided], reply: Decided | None, error: BaseException | None
) -> None:
    if future.done():  # the batch gave up on it
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(reply)  # type: ignore[arg-type]
