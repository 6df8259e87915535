"""A Kafka broker and a Redis of one test's own, for tests that stop, hang or kill them.

The session's shared dev stack (the ``stack`` fixture) must never be disturbed: other
tests use it. ``private_stack`` starts a second :class:`DevStack` under the test's
``tmp_path`` on free loopback ports, lets the test signal its processes, restarts them
on the same ports and data directories, and always takes it down afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fraudstream.devstack.stack import DevStack
from fraudstream.devstack.testing import TestStack, free_ports, unique_env
from fraudstream.errors import PortInUseError
from fraudstream.settings import DevstackSettings, Settings, load_settings
from tests.streams.harness import FraudstreamProcess

REDIS_DB = 1  # the Redis is ours alone: no lease needed


@dataclass
class PrivateStack:
    """One test's own broker and Redis (``devstack``), and the signals sent to them."""

    devstack: DevStack
    paused: set[str] = field(default_factory=set)

    @property
    def test_stack(self) -> TestStack:
        return TestStack(self.devstack.kafka_bootstrap, self.devstack.redis_url)

    @property
    def bootstrap(self) -> str:
        return self.devstack.kafka_bootstrap

    def pid(self, service: str) -> int:
        state = json.loads(self.devstack.state_file.read_text("utf-8"))
        return int(state["services"][service]["process"]["pid"])

    def env(self, data_dir: Path, **overrides: Any) -> tuple[Settings, dict[str, str]]:
        """Settings and ``FRAUDSTREAM__*`` variables for a worker on this stack (topics
        and app id unique to the call, as ``make_settings`` gives them)."""
        suffix = uuid.uuid4().hex[:10]
        env = unique_env(self.test_stack, REDIS_DB, suffix, data_dir / suffix, overrides)
        env["FRAUDSTREAM__AUTHORIZE__GROUP_ID"] = f"authorize-{suffix}"
        return load_settings(None, env), env

    def kill(self, service: str, sig: int = signal.SIGTERM, timeout: float = 60.0) -> float:
        """Send ``sig`` to ``service`` and wait until it has exited (SIGKILL after
        ``timeout``); returns how long it took to go."""
        proc = psutil.Process(self.pid(service))
        began = time.monotonic()
        proc.send_signal(sig)
        if service in self.paused:  # a stopped process acts on SIGTERM once continued
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)
            self.paused.discard(service)
        try:
            proc.wait(timeout)  # our child: this reaps it too
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        return time.monotonic() - began

    def pause(self, service: str) -> None:
        """SIGSTOP: the process keeps its sockets (connections are accepted by the
        kernel) and answers nothing, as a hung server does."""
        os.kill(self.pid(service), signal.SIGSTOP)
        self.paused.add(service)

    def resume(self, service: str) -> None:
        os.kill(self.pid(service), signal.SIGCONT)
        self.paused.discard(service)

    def restart(self) -> float:
        """Start whatever is not running, on the same ports and data directories;
        returns the seconds until both services answered again."""
        began = time.monotonic()
        self.devstack.up()
        return time.monotonic() - began

    def close(self) -> None:
        for service in list(self.paused):
            with contextlib.suppress(Exception):
                self.resume(service)
        self.devstack.down(purge=True)


def start_private_stack(home: Path, attempts: int = 3) -> PrivateStack:
    """A private stack on ports that are free right now (tried again with other ports
    should one be taken between the check and the start)."""
    for attempt in range(attempts):
        kafka_port, controller_port, redis_port = free_ports(3)
        settings = DevstackSettings(
            home=home,
            kafka_port=kafka_port,
            kafka_controller_port=controller_port,
            redis_port=redis_port,
            start_timeout_s=120.0,
        )
        stack = PrivateStack(DevStack(settings))
        try:
            stack.devstack.up()
        except PortInUseError:
            stack.devstack.down(purge=True)
            if attempt == attempts - 1:
                raise
            continue
        except BaseException:
            stack.devstack.down(purge=True)
            raise
        return stack
    raise AssertionError("unreachable")


@contextlib.contextmanager
def private_stack(home: Path) -> Iterator[PrivateStack]:
    """A private stack under ``home`` for the ``with`` block, always taken down (and
    its data deleted) afterwards, whatever the test did to it."""
    stack = start_private_stack(home)
    try:
        yield stack
    finally:
        stack.close()


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[FraudstreamProcess]:
    """``fraudstream <args>`` for the ``with`` block; killed at the end if still running
    (a test that wants its exit status stops it inside the block)."""
    process = FraudstreamProcess(args, env, log).start()
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.stop(signal.SIGKILL, timeout=10)


def metric_samples(port: int, name: str) -> dict[str, float]:
    """The samples of ``name`` on the worker's metrics endpoint, by their label text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    samples: dict[str, float] = {}
    for line in lines:
        if line.startswith((f"{name} ", f"{name}{{")):
            head, value = line.rsplit(" ", 1)
            samples[head[len(name) :]] = float(value)
    return samples


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
