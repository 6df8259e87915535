"""A circuit breaker per scoring layer, and a Scorer wrapped in one.

Why our own rather than ``purgatory`` or ``circuitbreaker``: those count raised
exceptions only (no latency budget), ``purgatory`` is asyncio-first while layers run
synchronously in a worker thread, and neither takes an injectable clock, which the
tests and the state-machine property need. The whole machine is ~150 lines here.

States: **closed** (calls pass; ``failure_threshold`` consecutive failures open it),
**open** (calls are refused with :class:`CircuitOpenError` until ``reset_timeout_s``
has passed), **half-open** (up to ``half_open_probes`` trial calls at a time; that
many successes in a row close it, one failure opens it again).

A failure is an exception from the layer, an invalid output (see
:class:`GuardedScorer`), or a call slower than the latency budget. A synchronous
CPU-bound call cannot be pre-empted from inside its thread, so a slow call is
measured when it returns: its scores are correct and are still used, but it counts as
a failure, so a layer that keeps overrunning is skipped from then on. A call that
never returns (a hung layer) is noticed by the next admission check, which counts
each call in flight for longer than the budget as one failure; the per-decision
deadline (``models/decide.py`` and the streaming agent's ``wait_for``) bounds what
such a call costs the batch it was in.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from fraudstream.errors import CircuitOpenError, LayerError, LayerTimeout
from fraudstream.settings import BreakerSettings
from models.base import Scorer, Scores, ScoringBatch

T = TypeVar("T")
V = TypeVar("V")
Clock = Callable[[], float]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[str, BreakerState, BreakerState], None]


@dataclass(frozen=True)
class CallResult(Generic[V]):
    """What a guarded call returned and how long it took."""

    value: V
    elapsed_ms: float
    overran: bool


class CircuitBreaker:
    """Thread-safe breaker for the layer ``name``; see the module docstring."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        latency_budget_ms: float | None = None,
        clock: Clock = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.latency_budget_ms = latency_budget_ms or settings.latency_budget_ms
        self._clock = clock
        self._listener = on_state_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, while closed
        self._successes = 0  # consecutive probe successes, while half-open
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._in_flight: dict[int, tuple[float, bool, bool]] = {}  # id -> (start, probe, counted)
        self._ids = itertools.count()

    # --- state ------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._advance()
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def _advance(self) -> None:
        """Apply the transitions that depend only on time (lock held)."""
        now = self._clock()
        budget_s = self.latency_budget_ms / 1000.0
        for call_id, (start, probe, counted) in list(self._in_flight.items()):
            if not counted and now - start > budget_s:
                # A call still running past its budget is a failure already (a hung layer).
                self._in_flight[call_id] = (start, probe, True)
                self._fail()
        if (
            self._state is BreakerState.OPEN
            and now - self._opened_at >= self.settings.reset_timeout_s
        ):
            self._set(BreakerState.HALF_OPEN)

    def _set(self, state: BreakerState) -> None:
        old, self._state = self._state, state
        if state is BreakerState.OPEN:
            self._opened_at = self._clock()
        if state is not BreakerState.CLOSED:
            self._failures = 0
        self._successes = 0
        if old is not state and self._listener is not None:
            self._listener(self.name, old, state)

    def _fail(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._set(BreakerState.OPEN)
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.settings.failure_threshold:
                self._set(BreakerState.OPEN)

    def _succeed(self, probe: bool) -> None:
        if self._state is BreakerState.CLOSED:
            self._failures = 0
        elif self._state is BreakerState.HALF_OPEN and probe:
            self._successes += 1
            if self._successes >= self.settings.half_open_probes:
                self._set(BreakerState.CLOSED)

    # --- calls ------------------------------------------------------------------------

    def _admit(self) -> tuple[int, float, bool]:
        with self._lock:
            self._advance()
            if self._state is BreakerState.OPEN:
                raise CircuitOpenError(self.name)
            probe = self._state is BreakerState.HALF_OPEN
            if probe:
                if self._probes_in_flight >= self.settings.half_open_probes:
                    raise CircuitOpenError(self.name)
                self._probes_in_flight += 1
            call_id = next(self._ids)
            start = self._clock()
            self._in_flight[call_id] = (start, probe, False)
            return call_id, start, probe

    def _finish(self, call_id: int, probe: bool, failed: bool) -> None:
        with self._lock:
            _, _, counted = self._in_flight.pop(call_id)
            if probe:
                self._probes_in_flight -= 1
            if failed and not counted:
                self._fail()
            elif not failed and not counted:
                self._succeed(probe)

    def call(self, fn: Callable[[], T], check: Callable[[T], None] | None = None) -> CallResult[T]:
        """Run ``fn`` through the breaker.

        Raises :class:`CircuitOpenError` (not run), or :class:`LayerError` when ``fn``
        raised or ``check`` rejected its value. A call over the latency budget returns
        normally with ``overran=True`` and is counted as a failure.
        """
        call_id, start, probe = self._admit()
        try:
            value = fn()
            if check is not None:
                check(value)
        except Exception as exc:
            self._finish(call_id, probe, failed=True)
            if isinstance(exc, LayerError) and exc.layer == self.name:
                raise
            raise LayerError(self.name, f"{type(exc).__name__}: {exc}") from exc
        elapsed_ms = (self._clock() - start) * 1000.0
        overran = elapsed_ms > self.latency_budget_ms
        self._finish(call_id, probe, failed=overran)
        return CallResult(value, elapsed_ms, overran)

    def record_failure(self) -> None:
        """Count a failure observed outside :meth:`call` (e.g. a missed deadline)."""
        with self._lock:
            self._advance()
            self._fail()


class GuardedScorer:
    """Any :class:`Scorer` behind a breaker, scored the same way (``name``, ``version``,
    ``score``; persistence stays with the inner scorer, which has no breaker to save).

    ``score`` returns scores, or raises :class:`CircuitOpenError` (skipped),
    :class:`LayerError` (raised, or returned the wrong shape, NaN or out-of-range
    values) or, with ``strict_latency``, :class:`LayerTimeout` for a call over budget.
    """

    def __init__(
        self, scorer: Scorer, breaker: CircuitBreaker, *, strict_latency: bool = False
    ) -> None:
        self.scorer = scorer
        self.breaker = breaker
        self.strict_latency = strict_latency

    @property
    def name(self) -> str:
        return self.scorer.name

    @property
    def version(self) -> str:
        return self.scorer.version

    def score_guarded(self, batch: ScoringBatch) -> CallResult[Scores]:
        def check(scores: Scores) -> None:
            validate_scores(self.scorer.name, scores, len(batch))

        result = self.breaker.call(lambda: self.scorer.score(batch), check)
        if result.overran and self.strict_latency:
            raise LayerTimeout(self.name, self.breaker.latency_budget_ms, result.elapsed_ms)
        return result

    def score(self, batch: ScoringBatch) -> Scores:
        return self.score_guarded(batch).value

    def save(self, directory: Path) -> None:
        """Saves the inner scorer; load it with its own class and wrap it again."""
        self.scorer.save(directory)


def validate_scores(layer: str, scores: object, rows: int) -> None:
    """A layer's output must keep the Scorer contract, or it is treated as a failure."""
    if not isinstance(scores, np.ndarray) or scores.shape != (rows,):
        shape = getattr(scores, "shape", type(scores).__name__)
        raise LayerError(layer, f"returned {shape} for {rows} rows")
    if not np.isfinite(scores).all() or (scores < 0).any() or (scores > 1).any():
        raise LayerError(layer, "returned scores outside [0, 1] or NaN")
