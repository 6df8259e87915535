"""Watching for code being compiled or executed and processes being started, for the
fuzz tests that try to make a rule or a config file run code.

One Python audit hook for the whole test session (hooks cannot be removed): inert
unless a :class:`CodeWatch` block is active, then it records every watched event.
"""

from __future__ import annotations

import sys
from typing import Any

WATCHED_EVENTS = (
    "exec",
    "compile",
    "os.system",
    "subprocess.Popen",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "ctypes.dlopen",
    "builtins.input",
)
_watching = {"on": False}
seen: list[tuple[str, str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching["on"] and event.startswith(WATCHED_EVENTS):
        seen.append((event, repr(args)[:200]))


sys.addaudithook(_audit)


class CodeWatch:
    """``with CodeWatch(): ...`` then ``seen`` lists what ran code inside the block."""

    def __enter__(self) -> None:
        seen.clear()
        _watching["on"] = True

    def __exit__(self, *exc: object) -> None:
        _watching["on"] = False
