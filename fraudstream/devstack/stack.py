"""``DevStack``: bring the local Kafka broker and Redis up, report on them, take them down.

Layout under ``settings.home`` (default ``<repo>/.devstack``, git-ignored)::

    state.json              what ``up`` started: pid, process start time, argv, ports
    .lock                   serialises up/down between processes
    kafka/server.properties kafka/data/ kafka/broker.log kafka/broker.pid kafka/format.log
    redis/redis.conf        redis/data/ redis/redis.log  redis/redis.pid

The broker's jars live outside it, in a per-machine cache keyed on ``pom.xml``
(``~/.cache/fraudstream/kafka-<version>-<digest>/lib``), so every home shares one copy.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudstream.devstack import kafka, procs, redis
from fraudstream.devstack.procs import ProcessRecord
from fraudstream.errors import DevstackError, PortInUseError
from fraudstream.settings import DevstackSettings

SERVICES = ("kafka", "redis")
GRACE_S = {"kafka": 30.0, "redis": 10.0}
DEFAULT_CACHE = Path.home() / ".cache" / "fraudstream"


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack answers, and what this ``up`` call started."""

    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int
    redis_pid: int
    home: Path
    started: tuple[str, ...] = ()

    @property
    def already_running(self) -> bool:
        return not self.started


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    address: str
    pid: int | None = None
    answers: bool | None = None  # None: not asked (not running)
    detail: str = ""
    log: Path | None = None


@dataclass(frozen=True)
class StackStatus:
    services: tuple[ServiceStatus, ...]

    @property
    def all_running(self) -> bool:
        return all(s.running and s.answers for s in self.services)

    def __getitem__(self, name: str) -> ServiceStatus:
        return next(s for s in self.services if s.name == name)


@dataclass(frozen=True)
class _Entry:
    record: ProcessRecord
    ports: tuple[int, ...]
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"process": self.record.to_json(), "ports": list(self.ports), "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Entry:
        return cls(
            ProcessRecord.from_json(data["process"]),
            tuple(int(p) for p in data["ports"]),
            str(data.get("detail", "")),
        )


def _quiet(_: str) -> None:
    pass


@dataclass
class DevStack:
    """The dev stack described by ``settings``; ``report`` receives progress lines."""

    settings: DevstackSettings
    cache_dir: Path = DEFAULT_CACHE
    report: Callable[[str], None] = field(default=_quiet)

    # --- paths ---------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    def _dir(self, service: str) -> Path:
        return self.home / service

    def _log(self, service: str) -> Path:
        return self._dir(service) / ("broker.log" if service == "kafka" else "redis.log")

    def _pid_file(self, service: str) -> Path:
        return self._dir(service) / ("broker.pid" if service == "kafka" else "redis.pid")

    def _ports(self, service: str) -> tuple[int, ...]:
        s = self.settings
        return (s.kafka_port, s.kafka_controller_port) if service == "kafka" else (s.redis_port,)

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.settings.host}:{self.settings.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.settings.host}:{self.settings.redis_port}/0"

    # --- state ---------------------------------------------------------------------

    def _load(self) -> dict[str, _Entry]:
        try:
            raw = json.loads(self.state_file.read_text("utf-8"))
            return {name: _Entry.from_json(data) for name, data in raw["services"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            raise DevstackError(
                f"{self.state_file} is unreadable ({exc}); fix or delete it"
            ) from exc

    def _save(self, state: dict[str, _Entry]) -> None:
        for service in SERVICES:
            pid_file = self._pid_file(service)
            if service in state:
                pid_file.parent.mkdir(parents=True, exist_ok=True)
                pid_file.write_text(f"{state[service].record.pid}\n", "utf-8")
            else:
                pid_file.unlink(missing_ok=True)
        if not state:
            self.state_file.unlink(missing_ok=True)
            return
        tmp = self.state_file.with_suffix(".tmp")
        payload = {
            "host": self.settings.host,
            "services": {n: e.to_json() for n, e in state.items()},
        }
        tmp.write_text(json.dumps(payload, indent=2) + "\n", "utf-8")
        tmp.replace(self.state_file)

    # --- commands ------------------------------------------------------------------

    def fetch(self) -> Path:
        """Check Java and resolve the broker's jars (once per machine); their directory."""
        kafka.java_binary()
        return kafka.resolve_jars(self.cache_dir, self.report)

    def up(self) -> StackInfo:
        """Start whatever is not running yet and return once both services answer.
        A second call while everything runs is a no-op."""
        self.home.mkdir(parents=True, exist_ok=True)
        with procs.file_lock(self.home / ".lock"):
            state = {n: e for n, e in self._load().items() if procs.is_ours(e.record)}
            for name, entry in state.items():
                if entry.ports != self._ports(name):
                    raise DevstackError(
                        f"{name} is already running on port(s) {entry.ports} but the settings say "
                        f"{self._ports(name)}; run `fraudstream devstack down` first"
                    )
            to_start = [n for n in SERVICES if n not in state]
            for name in to_start:
                for port in self._ports(name):
                    if procs.port_in_use(self.settings.host, port):
                        raise PortInUseError(name, self.settings.host, port)
            self._save(state)  # forget processes that are gone
            try:
                for name in to_start:
                    state[name] = self._start_kafka() if name == "kafka" else self._start_redis()
                    self._save(state)
                self._wait_ready(state, fresh=to_start)
            except BaseException:
                for name in to_start:
                    if name in state:
                        procs.stop(state.pop(name).record, GRACE_S[name])
                self._save(state)
                raise
            if not to_start:
                self.report(
                    f"dev stack already running (kafka pid {state['kafka'].record.pid}, "
                    f"redis pid {state['redis'].record.pid})"
                )
            return StackInfo(
                self.kafka_bootstrap,
                self.redis_url,
                state["kafka"].record.pid,
                state["redis"].record.pid,
                self.home,
                tuple(to_start),
            )

    def down(self, *, purge: bool = False) -> list[str]:
        """Stop exactly the processes ``up`` recorded; with ``purge`` also delete the
        broker's data and both services' logs. Returns the services it stopped."""
        if not self.home.exists():
            return []
        stopped: list[str] = []
        with procs.file_lock(self.home / ".lock"):
            for name, entry in self._load().items():
                pid = entry.record.pid
                if procs.stop(entry.record, GRACE_S[name]):
                    stopped.append(name)
                    self.report(f"{name}: stopped pid {pid}")
                else:
                    self.report(f"{name}: pid {pid} is gone or no longer ours; not signalled")
            self._save({})
            if purge:
                for service in SERVICES:
                    shutil.rmtree(self._dir(service), ignore_errors=True)
                self.report(f"purged {self._dir('kafka')} and {self._dir('redis')}")
        return stopped

    def status(self) -> StackStatus:
        state = self._load()
        rows = []
        for name in SERVICES:
            entry = state.get(name)
            running = entry is not None and procs.is_ours(entry.record)
            address = self.kafka_bootstrap if name == "kafka" else self.redis_url
            answers: bool | None = None
            detail = entry.detail if entry is not None and running else ""
            if running and name == "kafka":
                answers = kafka.answers(self.kafka_bootstrap)
            elif running:
                answers = redis.ping(self.settings.host, self.settings.redis_port)
            else:
                busy = [p for p in self._ports(name) if procs.port_in_use(self.settings.host, p)]
                if busy:
                    detail = f"port {busy[0]} is in use by another process"
            pid = entry.record.pid if entry is not None and running else None
            rows.append(
                ServiceStatus(name, running, address, pid, answers, detail, self._log(name))
            )
        return StackStatus(tuple(rows))

    # --- starting ------------------------------------------------------------------

    def _start_kafka(self) -> _Entry:
        s = self.settings
        java = kafka.java_binary()
        lib = kafka.resolve_jars(self.cache_dir, self.report)
        kdir = self._dir("kafka")
        data = kdir / "data"
        kdir.mkdir(parents=True, exist_ok=True)
        properties = kdir / "server.properties"
        properties.write_text(kafka.server_properties(s, data), "utf-8")
        began = time.monotonic()
        if kafka.format_storage(java, lib, properties, data, kdir / "format.log"):
            self.report(f"kafka: storage formatted in {time.monotonic() - began:.1f} s ({data})")
        argv = kafka.broker_argv(java, lib, properties, s)
        record, _ = procs.spawn(argv, self._log("kafka"), cwd=kdir)
        self.report(f"kafka: started pid {record.pid}, waiting for {self.kafka_bootstrap} ...")
        return _Entry(record, self._ports("kafka"), f"Kafka {kafka.kafka_version()} (KRaft)")

    def _start_redis(self) -> _Entry:
        s = self.settings
        binary, source = redis.server_binary()
        rdir = self._dir("redis")
        data = rdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = rdir / "redis.conf"
        conf.write_text(redis.redis_conf(s, data), "utf-8")
        record, _ = procs.spawn([binary, str(conf)], self._log("redis"), cwd=rdir)
        self.report(f"redis: started pid {record.pid} ({binary}, from {source})")
        return _Entry(record, self._ports("redis"), f"redis-server from {source}")

    def _wait_ready(self, state: dict[str, _Entry], fresh: list[str]) -> None:
        s = self.settings
        timeout = s.start_timeout_s
        if "redis" not in fresh and not procs.port_answers(s.host, s.redis_port):
            fresh = [*fresh, "redis"]
        if "kafka" not in fresh and not procs.port_answers(s.host, s.kafka_port):
            fresh = [*fresh, "kafka"]
        if "redis" in fresh:
            redis.wait_ready(
                s.host, s.redis_port, state["redis"].record.pid, self._log("redis"), timeout
            )
        if "kafka" in fresh:
            began = time.monotonic()
            kafka.wait_ready(
                self.kafka_bootstrap, state["kafka"].record.pid, self._log("kafka"), timeout
            )
            self.report(
                f"kafka: ready at {self.kafka_bootstrap} in {time.monotonic() - began:.1f} s "
                "(topic created, message round-tripped)"
            )
