"""Hot reload of the rule file, without restart, keeping the last good rules on error.

:meth:`RuleBook.current` is called once per micro-batch. At most every
``reload_interval_s`` it reads the file and compares its sha256 with the running rule
set's. A changed file must read the same on two consecutive checks before it is used:
an editor that truncates and rewrites in place can be caught half-way, and half a rule
file (cut between two ``[[rule]]`` tables) is often a valid one, silently missing rules.
A settled file is checked in full and swapped in with one reference assignment (atomic
under the GIL, so a batch sees either the old rules or the new ones, never a mix). A
file that fails any check is reported through ``on_error`` and the running rules stay.

Reading the whole (small) file rather than trusting its mtime also catches edits that
keep size and timestamp, e.g. on coarse-grained file systems. Deploy tools should still
write the file atomically (write a temporary file, then rename it over this one).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from fraudstream.errors import RuleFileError
from models.rules.loader import RuleSet, load_rule_file, parse_rules

Clock = Callable[[], float]


class RuleBook:
    """The rules in force, re-read from ``path`` when it changes."""

    def __init__(
        self,
        path: Path,
        *,
        features: Collection[str] | None = None,
        reload_interval_s: float = 1.0,
        clock: Clock = time.monotonic,
        on_reload: Callable[[RuleSet], None] | None = None,
        on_error: Callable[[RuleFileError], None] | None = None,
    ) -> None:
        """Loads ``path`` now; a bad file at start-up raises :class:`RuleFileError`."""
        self._path = path
        self._features = frozenset(features) if features is not None else None
        self._interval = reload_interval_s
        self._clock = clock
        self._on_reload = on_reload
        self._on_error = on_error
        self._current = load_rule_file(path, self._features)
        self._last_check = clock()
        self._last_error: RuleFileError | None = None
        self._rejected_digest: str | None = None
        self._pending_digest: str | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_error(self) -> RuleFileError | None:
        """Why the file on disk is not the one running, or None when it is."""
        return self._last_error

    def current(self) -> RuleSet:
        """The rules to use for this batch (cheap unless a check is due)."""
        if self._clock() - self._last_check >= self._interval:
            self.check()
        return self._current

    def check(self) -> bool:
        """Re-read the file now; True when new rules were swapped in (a change is used
        on the second check that reads it unchanged)."""
        # Two threads checking at once would only parse twice; the lock keeps it once.
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._last_check = self._clock()
            rules = self._read_changed()
        finally:
            self._lock.release()
        if rules is None:
            return False
        if self._on_reload is not None:
            self._on_reload(rules)
        return True

    def _read_changed(self) -> RuleSet | None:
        """The file's rules if it changed, settled and passes every check (lock held)."""
        path = str(self._path)
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            self._reject(RuleFileError(path, "-", f"cannot read file: {exc.strerror or exc}"), None)
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._current.digest:
            self._last_error = None
            self._pending_digest = None
            return None
        if digest == self._rejected_digest:
            return None  # already reported; wait for the next edit
        if digest != self._pending_digest:
            self._pending_digest = digest  # seen once: use it if it reads the same next time
            return None
        try:
            rules = parse_rules(_decoded(data, path), path, self._features)
        except RuleFileError as exc:
            self._reject(exc, digest)
            return None
        self._current = rules
        self._last_error = None
        self._rejected_digest = None
        return rules

    def _reject(self, error: RuleFileError, digest: str | None) -> None:
        self._last_error = error
        self._rejected_digest = digest
        if self._on_error is not None:
            self._on_error(error)


def _decoded(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleFileError(path, "-", f"not UTF-8 text: {exc.reason}") from exc
