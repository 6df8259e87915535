"""Champion / challenger rollout: the canary split and the ops-edited rollout file.

The canary is chosen by transaction id, not at random: ``canary_bucket(id)`` is the
first 8 bytes of ``blake2b(id)`` read as an integer over ``2**64``, a number in
``[0, 1)`` that never changes for an id. An id is in the canary when its bucket is
below ``canary_share``, so a redelivered transaction gets the same model, and raising
the share only adds ids (one in the 1 % canary stays in at 10 % and at 100 %).

The share and the shadow switch live in a small TOML file (``config/rollout.toml``,
``models.rollout_file``) that :class:`RolloutFile` re-reads while the worker runs, like
the rule file (:mod:`models.rules.reload`): at most every ``reload_interval_s`` it reads
the whole file, a change is used once it reads the same on two consecutive checks (an
editor rewriting in place can be caught half-way), and a file that fails any check is
reported with :class:`fraudstream.errors.RolloutFileError` (file, line, field) while the
last good rollout keeps running.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fraudstream.errors import RolloutFileError
from fraudstream.settings import locate_key

Clock = Callable[[], float]
_SCALE = float(2**64)
MAX_FILE_BYTES = 64 * 1024


def canary_bucket(transaction_id: str) -> float:
    """Where ``transaction_id`` falls in ``[0, 1)``: stable, uniform, independent of the
    share (so the canary only ever grows with it)."""
    digest = hashlib.blake2b(transaction_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def in_canary(transaction_id: str, share: float) -> bool:
    return canary_bucket(transaction_id) < share


def canary_mask(transaction_ids: Sequence[str], share: float) -> list[bool]:
    """``in_canary`` of each id (all False / all True without hashing at 0 / 1)."""
    if share <= 0.0:
        return [False] * len(transaction_ids)
    if share >= 1.0:
        return [True] * len(transaction_ids)
    return [canary_bucket(t) < share for t in transaction_ids]


class RolloutPlan(BaseModel):
    """What the rollout file says. ``canary_share``: share of transactions decided by
    the challenger; ``shadow``: the challenger also scores the rest, into the shadow
    topic."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    canary_share: float = Field(default=0.0, ge=0.0, le=1.0)
    shadow: bool = True


@dataclass(frozen=True)
class LoadedRollout:
    plan: RolloutPlan
    digest: str  # sha256 of the file's bytes ("" for the built-in default)


DEFAULT_ROLLOUT = LoadedRollout(RolloutPlan(), "")


def parse_rollout(data: bytes, path: str) -> LoadedRollout:
    """The plan in ``data`` (the bytes of ``path``), or :class:`RolloutFileError`."""
    if len(data) > MAX_FILE_BYTES:
        raise RolloutFileError(path, "-", f"file is over {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RolloutFileError(path, "-", f"not UTF-8 text: {exc.reason}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise RolloutFileError(path, "-", f"invalid TOML: {exc}", line) from exc
    # An integer share (0 or 1) is a fine way to write it; strict mode would refuse it.
    share = raw.get("canary_share")
    if isinstance(share, int) and not isinstance(share, bool):
        raw["canary_share"] = float(share)
    try:
        plan = RolloutPlan.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"]) or "-"
        line = locate_key(text, key) if key != "-" else None
        raise RolloutFileError(path, key, error["msg"], line) from None
    return LoadedRollout(plan, hashlib.sha256(data).hexdigest())


def load_rollout_file(path: Path, *, missing_ok: bool = True) -> LoadedRollout:
    """The rollout in ``path``; the default (no canary, shadow on) when it does not exist
    and ``missing_ok``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return DEFAULT_ROLLOUT
        raise RolloutFileError(str(path), "-", "file not found") from None
    except OSError as exc:
        raise RolloutFileError(str(path), "-", f"cannot read file: {exc.strerror or exc}") from exc
    return parse_rollout(data, str(path))


class RolloutFile:
    """The rollout in force, re-read from ``path`` when it changes.

    Loads ``path`` now: a bad file at start-up raises :class:`RolloutFileError`; a
    missing one means the default (no canary, shadow on) until it appears.
    """

    def __init__(
        self,
        path: Path,
        *,
        reload_interval_s: float = 1.0,
        clock: Clock = time.monotonic,
        on_reload: Callable[[RolloutPlan], None] | None = None,
        on_error: Callable[[RolloutFileError], None] | None = None,
    ) -> None:
        self._path = path
        self._interval = reload_interval_s
        self._clock = clock
        self._on_reload = on_reload
        self._on_error = on_error
        self._current = load_rollout_file(path)
        self._last_check = clock()
        self._last_error: RolloutFileError | None = None
        self._rejected: str | None = None
        self._pending: str | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def plan(self) -> RolloutPlan:
        """The rollout in force, without checking the file."""
        return self._current.plan

    @property
    def last_error(self) -> RolloutFileError | None:
        """Why the file on disk is not the rollout in force, or None when it is."""
        return self._last_error

    def current(self) -> RolloutPlan:
        """The rollout for this batch (cheap unless a check is due)."""
        if self._clock() - self._last_check >= self._interval:
            self.check()
        return self._current.plan

    def check(self) -> bool:
        """Re-read the file now; True when a new rollout took effect."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._last_check = self._clock()
            loaded = self._read_changed()
        finally:
            self._lock.release()
        if loaded is None:
            return False
        if self._on_reload is not None:
            self._on_reload(loaded.plan)
        return True

    def _read_changed(self) -> LoadedRollout | None:
        path = str(self._path)
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            self._reject(RolloutFileError(path, "-", f"cannot read file: {exc.strerror}"), None)
            return None
        if data is None:
            return self._deleted()
        digest = hashlib.sha256(data).hexdigest()
        if digest in (self._current.digest, self._rejected):
            if digest == self._current.digest:
                self._last_error, self._pending = None, None
            return None  # unchanged, or already reported: wait for the next edit
        if digest != self._pending:
            self._pending = digest  # seen once: used if it reads the same next time
            return None
        try:
            loaded = parse_rollout(data, path)
        except RolloutFileError as exc:
            self._reject(exc, digest)
            return None
        changed = loaded.plan != self._current.plan
        self._current, self._last_error, self._rejected = loaded, None, None
        return loaded if changed else None

    def _deleted(self) -> LoadedRollout | None:
        """Back to the default, like a missing file at start-up."""
        if self._current.digest == "":
            return None
        self._current, self._pending, self._last_error = DEFAULT_ROLLOUT, None, None
        return DEFAULT_ROLLOUT

    def _reject(self, error: RolloutFileError, digest: str | None) -> None:
        self._last_error, self._rejected = error, digest
        if self._on_error is not None:
            self._on_error(error)


class FixedRollout:
    """A rollout that never changes (the bundle source, and tests)."""

    def __init__(self, plan: RolloutPlan | None = None) -> None:
        self.plan = plan or RolloutPlan()

    def current(self) -> RolloutPlan:
        return self.plan
