"""Run real ``fraudstream`` processes and talk to the real broker from tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fraudstream.simulator import SimulatorConfig, generate
from streams.demo import FRAUDSTREAM_COMMAND
from streams.replay import messages_from_frame

REPO = Path(__file__).resolve().parents[2]


# Delivery, not speed: a loaded CI machine must not turn decisions into timeout
# defaults, so the tests about delivery give the worker a generous per-decision deadline
# and layer budget (the deadline itself is tested in test_fault_layers.py).
DELIVERY_OVERRIDES: dict[str, str] = {
    "scoring__deadline_ms": "30000",
    "breaker__latency_budget_ms": "30000",
    "breaker__layer_latency_budget_ms": '{"rules": 30000}',  # the shipped one is tighter
}


class FraudstreamProcess:
    """``fraudstream <args>`` as a child process with its output captured.

    ``wait_for(text)`` blocks until a line containing ``text`` was printed, so a test
    knows the worker has joined its group before it produces.
    """

    def __init__(self, args: Iterable[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = list(args)
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.left_running: list[str] = []  # set by stop()

    def start(self) -> FraudstreamProcess:
        self.proc = subprocess.Popen(
            [*FRAUDSTREAM_COMMAND, *self.args],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Decoded here, never strictly: a pump that died on one odd byte would stop
            # draining the pipe, and the process would hang on its next write.
            encoding="utf-8",
            errors="replace",
        )
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        # Line-buffered: a test that fails reads the log's tail while the process may
        # still be running (or stuck), and should see everything it printed so far.
        with self.log_path.open("a", encoding="utf-8", buffering=1) as log:
            for line in self.proc.stdout:
                log.write(line)
                with self._seen:
                    self.lines.append(line)
                    self._seen.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(text in line for line in self.lines):
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"process exited early; log: {self.log_path}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{text!r} not seen in {timeout}s; log: {self.log_path}")
                self._seen.wait(remaining)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit status (stacks dumped, then SIGKILL, after
        ``timeout``). What the process started and left running is killed too, and
        named in :attr:`left_running`: a test run must not pile up orphans (a worker's
        GNN refresh child holds ~800 MB)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            descendants = _descendants(self.proc.pid)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.dump_stacks()
                self.proc.kill()
                self.proc.wait(10)
            self.left_running = _reap(descendants, grace_s=5.0)
        return self.proc.returncode

    def dump_stacks(self, settle_s: float = 3.0) -> None:
        """Have a stuck worker print every thread's stack and every asyncio task's
        (mode's worker does on SIGUSR1) into its log, for the failure report. Nothing
        comes when the event loop itself is blocked: that is then the finding. A process
        without the handler just ends (SIGUSR1's default), as it was about to anyway."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(settle_s)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return children


def _reap(processes: list[psutil.Process], grace_s: float) -> list[str]:
    """Those of ``processes`` still running ``grace_s`` after their parent ended
    (their command lines), killed."""
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    left = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            left.append(" ".join(process.cmdline())[:200])
            process.kill()
    return left


def transaction(i: int, *, cards: int = 50, start: datetime | None = None) -> dict[str, Any]:
    start = start or datetime(2025, 3, 1, tzinfo=UTC)
    return {
        "schema_version": 1,
        "transaction_id": f"tx-{i:07d}",
        "event_time": (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "card_id": f"card-{i % cards}",
        "terminal_id": f"term-{i % 17}",
        "amount": round(5 + (i * 7919 % 500) / 3, 2),
        "currency": "EUR",
    }


async def produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    count = 0
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def consume_until(
    bootstrap: str,
    topics: list[str],
    done: Callable[[dict[str, list[Any]]], bool],
    timeout: float,
) -> dict[str, list[Any]]:
    """Read ``topics`` from the beginning until ``done(received)`` or ``timeout``.

    Returns the decoded JSON values per topic; keeps reading a little after ``done`` so a
    duplicate produced late would still be seen.
    """
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    received: dict[str, list[Any]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is not None and time.monotonic() > settle_until:
                break
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                received[tp.topic].extend(json.loads(r.value) for r in records)
            if settle_until is None and done(received):
                settle_until = time.monotonic() + 2.0
    finally:
        await consumer.stop()
    return received


def run(coro: Any) -> Any:
    return asyncio.get_event_loop().run_until_complete(coro)


class TopicTail:
    """Reads ``topics`` from the beginning in the background while a test goes on, so
    the test can wait for progress (``await tail.wait(lambda got: ...)``) and read
    everything received at the end. Values are decoded JSON, kept in arrival order."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.received: dict[str, list[Any]] = {t: [] for t in topics}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> TopicTail:
        self._consumer = AIOKafkaConsumer(
            *self.received,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await self._consumer.start()
        self._task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                self.received[tp.topic].extend(json.loads(r.value) for r in records)

    def count(self, topic: str) -> int:
        return len(self.received[topic])

    async def wait(
        self, done: Callable[[dict[str, list[Any]]], bool], timeout: float, what: str = ""
    ) -> None:
        """Returns once ``done(received)``; raises TimeoutError naming ``what`` and the
        counts so far after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.received):
            if self._task is not None and self._task.done():
                self._task.result()  # the reader failed: say why
            if time.monotonic() > deadline:
                counts = {t: len(v) for t, v in self.received.items()}
                raise TimeoutError(f"{what or 'condition'} not reached in {timeout}s: {counts}")
            await asyncio.sleep(0.25)

    async def stop(self, settle_s: float = 2.0) -> dict[str, list[Any]]:
        """Keeps reading ``settle_s`` more seconds (a late duplicate would still be
        seen), then stops; everything received."""
        await asyncio.sleep(settle_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        return self.received


def simulated_replay(seed: int) -> tuple[list[Any], list[str]]:
    """Two days of simulated transactions (over 3,000) as raw (key, value) messages,
    and their transaction ids in the same order."""
    data = generate(SimulatorConfig(seed=seed, n_cards=1000, n_terminals=300, days=2))
    messages = messages_from_frame(data.transactions)
    ids = [str(i) for i in data.transactions["transaction_id"]]
    assert len(set(ids)) == len(messages) >= 3000
    return messages, ids
