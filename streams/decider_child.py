"""The decider's child process: the worker's decider (feature lookup, layers, routing,
deadline) in an interpreter of its own, answering :class:`streams.decider_process.DeciderProcess`.

Why a process: in the worker, the decision thread shares the interpreter lock with
Faust's event loop, and under load its layers ran 4-5 times slower than alone. The
rule layer then went over its breaker budget and was skipped, and whole batches
passed the deadline (measured in ``benchmarks/results/end_to_end.md``: at 1,200-1,600
decisions/s the in-process worker left up to 89 % of decisions degraded and up to a
third as deadline defaults; the same decider in a child, none).

The child holds everything that decides: the engines (champion and challenger), the
registry watcher that hot-swaps them, the GNN embeddings and their refresh. It talks
to the parent over one pipe in msgpack (never pickle): requests (:class:`DecideRequest`,
:class:`LabelsRequest`) in, replies out. The parent gets the child's metrics as plain
events with each reply (:class:`HookEvents`) and replays them on its own registry, so
the worker's ``/metrics`` is the same as without a child.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any, Protocol

import msgspec

from fraudstream.settings import Settings
from fraudstream.wire import Decision, LabelEvent, Transaction
from models.decide import LayerReport

log = logging.getLogger(__name__)


# --- the wire between parent and child ------------------------------------------------


class DecideRequest(msgspec.Struct, tag="decide"):
    seq: int  # replies carry it: the parent drops a reply it no longer waits for
    transactions: list[Transaction]
    now: datetime  # the batch's time, as the agent gave it (decided_at counts from it)
    taken_at: float  # the parent's time.time() when it took the batch: the deadline's start


class LabelsRequest(msgspec.Struct, tag="labels"):
    labels: list[LabelEvent]


class StopRequest(msgspec.Struct, tag="stop"):
    """Finish and exit. Closing the pipe is not enough: the parent's reader thread is
    blocked reading it, and on Linux a close does not wake a read in progress, so the
    socket stays open and this side would never see the end of it."""


class Ready(msgspec.Struct, tag="ready"):
    info: dict[str, Any]  # the engine in force (``EngineInfo.as_json``)
    source: str
    model_version: str  # the champion's, for the defaults the parent emits itself


class StartFailed(msgspec.Struct, tag="start_failed"):
    kind: str  # the error's type name
    message: str


class Decided(msgspec.Struct, tag="decided"):
    seq: int
    decisions: list[Decision]
    shadow: list[tuple[bytes | None, bytes]]  # (key, value) of each shadow decision
    # The champion in force after this batch (a hot swap moves it), for the defaults
    # the parent emits itself: a decision's own version may be the canary's.
    champion_version: str
    # What the hooks recorded since the last reply, as (name, args...): a late
    # batch's breaker change rides with the next reply.
    events: list[Any]


ToChild = DecideRequest | LabelsRequest | StopRequest
ToParent = Ready | StartFailed | Decided


class HookEvents:
    """The engine's and the decider's hooks (``PrometheusEngineHooks`` and the stream
    hooks' ``pipeline_failed``), recorded as plain tuples to send to the parent. Called
    from the decision threads, so ``take`` swaps the list under a lock."""

    def __init__(self) -> None:
        self._events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def _add(self, *event: Any) -> None:
        with self._lock:
            self._events.append(event)

    def take(self) -> list[tuple[Any, ...]]:
        with self._lock:
            taken, self._events = self._events, []
        return taken

    # ``PrometheusEngineHooks``
    def layer_result(self, report: LayerReport) -> None:
        self._add(
            "layer_result",
            report.layer,
            report.status,
            report.elapsed_ms,
            str(report.breaker_state),
            report.rows,
            report.error,
        )

    def breaker_changed(self, layer: str, old: str, new: str) -> None:
        self._add("breaker_changed", layer, str(old), str(new))

    def feature_store_error(self, error: BaseException) -> None:
        self._add("feature_store_error", type(error).__name__, str(error))

    def feature_lookup(self, seconds: float, ok: bool) -> None:
        self._add("feature_lookup", seconds, ok)

    def engine_error(self, error: BaseException) -> None:
        self._add("engine_error", type(error).__name__, str(error))

    # ``streams.scoring.StreamHooks``: only what the decider calls
    def pipeline_failed(self, error: BaseException) -> None:
        self._add("pipeline_failed", type(error).__name__, str(error))

    def batch_processed(self, outcome: Any, size: int, seconds: float) -> None:
        return None

    def labels_processed(self, outcome: Any, size: int, seconds: float) -> None:
        return None


class ChildParts(Protocol):
    """What a child's build gives (``streams.worker.ScoringParts`` has all of it)."""

    @property
    def decider(self) -> Any: ...  # RoutedDecider: decide(..., budget_s=), take_shadow()

    @property
    def info(self) -> Any: ...  # EngineInfo

    @property
    def source(self) -> str: ...

    @property
    def watcher(self) -> Any: ...  # RegistryWatcher | None

    @property
    def gnn(self) -> Any: ...  # GnnRefresh | None


# (settings, hooks) -> the parts; a module-level function, so that a spawned child can
# import it by name (tests pass fakes).
Build = Callable[[Settings, HookEvents], ChildParts]


def build_real(settings: Settings, hooks: HookEvents) -> ChildParts:
    from streams.worker import build_scoring  # the worker imports this module

    return build_scoring(settings, hooks, hooks)  # type: ignore[arg-type]


# --- the child ------------------------------------------------------------------------


def serve(conn: Connection, settings: Settings, build: Build) -> None:
    """The child's entry point: build, say ``Ready`` (or ``StartFailed``), then answer
    requests until told to stop or the pipe ends (the parent died)."""
    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the worker
    # finishes its batches in hand and then closes the pipe, which is what stops us.
    # Dying first would turn those batches into engine-error defaults. A handler that
    # does nothing, not SIG_IGN: an ignored signal stays ignored in the processes we
    # start (the GNN refresh's), and SIGTERM is how they are stopped.
    signal.signal(signal.SIGINT, _ignore)
    signal.signal(signal.SIGTERM, _ignore)
    logging.basicConfig(
        level=settings.worker.log_level, format="%(asctime)s decider[child] %(message)s"
    )
    encode = msgspec.msgpack.Encoder().encode
    hooks = HookEvents()
    try:
        parts = build(settings, hooks)
        if parts.gnn is not None:
            parts.gnn.warm_up()
    except Exception as exc:  # reported to the parent, which stops start-up with it
        conn.send_bytes(encode(StartFailed(type(exc).__name__, str(exc))))
        return
    from streams.worker import freeze_startup_objects

    freeze_startup_objects()
    champion = parts.decider.models.champion  # a RoutedDecider's ModelSet
    conn.send_bytes(encode(Ready(parts.info.as_json(), parts.source, champion.model_version)))
    try:
        asyncio.run(_answer(conn, settings, parts, hooks))
    finally:
        if parts.gnn is not None:
            parts.gnn.close()


def _ignore(signum: int, frame: Any) -> None:
    return None


async def _answer(
    conn: Connection, settings: Settings, parts: ChildParts, hooks: HookEvents
) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read() -> None:  # a thread: recv blocks, and the loop has timers to run
        try:
            while True:
                data = conn.recv_bytes()
                loop.call_soon_threadsafe(inbox.put_nowait, data)
        except (EOFError, OSError):
            loop.call_soon_threadsafe(inbox.put_nowait, None)

    threading.Thread(target=read, name="decider-child-reader", daemon=True).start()
    timers = [asyncio.ensure_future(t) for t in _timers(settings, parts)]
    decode = msgspec.msgpack.Decoder(ToChild).decode
    encode = msgspec.msgpack.Encoder().encode
    deadline_s = settings.scoring.deadline_ms / 1000.0
    try:
        while (data := await inbox.get()) is not None:
            request = decode(data)
            if isinstance(request, StopRequest):
                return
            if isinstance(request, LabelsRequest):
                if parts.gnn is not None:
                    parts.gnn.observe_labels(request.labels)
                continue
            reply = await decide_request(parts, request, deadline_s)
            reply.events = hooks.take()
            conn.send_bytes(encode(reply))
    finally:
        for timer in timers:
            timer.cancel()


async def decide_request(parts: ChildParts, request: DecideRequest, deadline_s: float) -> Decided:
    # The deadline counts from when the parent took the batch: a request that waited in
    # the pipe behind a late batch gets what is left, and the deadline's defaults at once
    # if nothing is (the parent has given up on it anyway).
    waited_s = max(0.0, time.time() - request.taken_at)  # one machine, one clock
    decider = parts.decider
    decisions = await decider.decide(
        request.transactions, request.now, budget_s=deadline_s - waited_s
    )
    shadow = [(o.key, o.value) for o in decider.take_shadow()]
    champion = decider.models.champion  # a RoutedDecider's ModelSet
    return Decided(request.seq, decisions, shadow, champion.model_version, [])


def _timers(settings: Settings, parts: ChildParts) -> Sequence[Any]:
    """The worker's timers that belong with the engines: the registry watcher (hot swap)
    and the GNN refresh, each off the loop like in the worker."""

    async def every(seconds: float, work: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(work)
            except Exception:  # a timer's failure must not stop the child
                log.exception("decider child: %s failed", getattr(work, "__name__", work))

    timers = []
    if parts.watcher is not None:
        timers.append(every(settings.models.poll_interval_s, parts.watcher.poll))
    gnn = parts.gnn
    if gnn is not None and settings.models.gnn_refresh_check_s > 0:
        timers.append(every(settings.models.gnn_refresh_check_s, gnn.refresh_due))
    return timers
