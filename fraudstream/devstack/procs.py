"""Processes, ports and locks for the dev stack.

A started process is remembered as a :class:`ProcessRecord` (pid *and* the kernel's
start time for it), so that a pid the kernel later hands to some other program is never
mistaken for ours and never signalled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

# Popen objects of the processes this interpreter started, kept so that they are reaped
# (no zombies, no "still running" warnings) when ``stop`` ends them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_SAME_START_S = 0.05


@dataclass(frozen=True)
class ProcessRecord:
    """What ``up`` remembers about a process it started."""

    pid: int
    create_time: float
    argv: tuple[str, ...]
    log: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            argv=tuple(str(a) for a in data["argv"]),
            log=str(data["log"]),
        )


def spawn(
    argv: Sequence[str], log_path: Path, cwd: Path
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    """Start ``argv`` detached from our session, stdout and stderr to ``log_path`` (the
    previous run's log is kept as ``<log_path>.1``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:  # it died at once; the caller's readiness check reports why
        created = 0.0
    return ProcessRecord(proc.pid, created, tuple(argv), str(log_path)), proc


def is_ours(record: ProcessRecord) -> bool:
    """True when ``record.pid`` is alive and is still the very process we started."""
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started: float = proc.create_time()
        if abs(started - record.create_time) >= _SAME_START_S:
            return False
        # Redis rewrites its command line, so compare the program name only (the kernel
        # truncates it to 15 characters).
        name, program = proc.name(), Path(record.argv[0]).name
        return bool(name) and (name == program or program.startswith(name))
    except psutil.Error:
        return False


def stop(record: ProcessRecord, grace_s: float) -> bool:
    """SIGTERM the process of ``record`` (only if it is still ours), SIGKILL it after
    ``grace_s``. Returns whether it was ours and running."""
    if not is_ours(record):
        _CHILDREN.pop(record.pid, None)
        return False
    proc = psutil.Process(record.pid)
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    child = _CHILDREN.pop(record.pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    return True


def exit_code(pid: int) -> int | None:
    """The exit status of a child we started that has exited, else None."""
    child = _CHILDREN.get(pid)
    return None if child is None else child.poll()


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails, i.e. something else listens there."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if needed) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when called from inside a
    running event loop (then it runs on a helper thread with its own loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def monotonic_deadline(seconds: float) -> Callable[[], float]:
    """A function giving the seconds left until ``seconds`` from now (never negative)."""
    end = time.monotonic() + seconds
    return lambda: max(0.0, end - time.monotonic())
