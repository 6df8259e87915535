"""The circuit breaker: opening on errors and slowness, half-open probes, recovery."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fraudstream.errors import CircuitOpenError, LayerError, LayerTimeout
from fraudstream.settings import BreakerSettings
from models.base import Scorer, ScoringBatch
from models.breaker import BreakerState, CircuitBreaker, GuardedScorer
from tests.models.factories_rules import make_tx, rule_batch

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_breaker(
    clock: FakeClock, changes: list[tuple[str, BreakerState, BreakerState]] | None = None, **kw: Any
) -> CircuitBreaker:
    config = {"failure_threshold": 3, "reset_timeout_s": 5.0, "latency_budget_ms": 20.0} | kw
    return CircuitBreaker(
        "layer",
        BreakerSettings(**config),
        clock=clock,
        on_state_change=(lambda *c: changes.append(c)) if changes is not None else None,
    )


def ok(clock: FakeClock | None = None, seconds: float = 0.001) -> Callable[[], str]:
    def call() -> str:
        if clock is not None:
            clock.advance(seconds)
        return "scores"

    return call


def boom() -> str:
    raise RuntimeError("model file vanished")


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    breaker = make_breaker(clock, changes)
    for _ in range(2):
        with pytest.raises(LayerError, match="model file vanished"):
            breaker.call(boom)
    breaker.call(ok())
    assert breaker.consecutive_failures == 0
    for _ in range(3):
        with pytest.raises(LayerError) as caught:
            breaker.call(boom)
        assert caught.value.layer == "layer"
    assert breaker.state is OPEN
    assert changes == [("layer", CLOSED, OPEN)]


def test_while_open_the_layer_is_not_called() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=1)
    with pytest.raises(LayerError):
        breaker.call(boom)
    calls: list[int] = []
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: calls.append(1))
    assert calls == []


def test_half_open_probes_close_it_after_the_reset_timeout() -> None:
    clock = FakeClock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    breaker = make_breaker(clock, changes, failure_threshold=1, half_open_probes=2)
    with pytest.raises(LayerError):
        breaker.call(boom)
    clock.advance(4.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN
    breaker.call(ok())
    assert breaker.state is HALF_OPEN  # one probe of two
    breaker.call(ok())
    assert breaker.state is CLOSED
    assert changes == [
        ("layer", CLOSED, OPEN),
        ("layer", OPEN, HALF_OPEN),
        ("layer", HALF_OPEN, CLOSED),
    ]


def test_a_failed_probe_reopens_it_and_restarts_the_timer() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=1)
    with pytest.raises(LayerError):
        breaker.call(boom)
    clock.advance(5.0)
    with pytest.raises(LayerError):
        breaker.call(boom)
    assert breaker.state is OPEN
    clock.advance(4.0)
    assert breaker.state is OPEN
    clock.advance(1.0)
    assert breaker.state is HALF_OPEN


def test_a_slow_call_returns_its_result_but_counts_as_a_failure() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=2)
    result = breaker.call(ok(clock, 0.030))
    assert (result.value, result.overran) == ("scores", True)
    assert result.elapsed_ms == pytest.approx(30.0)
    assert breaker.consecutive_failures == 1
    assert not breaker.call(ok(clock, 0.010)).overran
    assert breaker.consecutive_failures == 0
    breaker.call(ok(clock, 0.030))
    breaker.call(ok(clock, 0.030))
    assert breaker.state is OPEN


def test_a_per_layer_budget_overrides_the_default() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "gnn", BreakerSettings(latency_budget_ms=20.0), latency_budget_ms=50.0, clock=clock
    )
    assert not breaker.call(ok(clock, 0.040)).overran


def test_a_call_that_hangs_counts_as_a_failure_before_it_returns() -> None:
    # One real thread: the layer blocks until released, as a hung layer would.
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=1)
    release = threading.Event()
    started = threading.Event()

    def hang() -> str:
        started.set()
        release.wait(5.0)
        return "late"

    worker = threading.Thread(target=lambda: breaker.call(hang))
    worker.start()
    assert started.wait(5.0)
    assert breaker.state is CLOSED
    clock.advance(0.025)  # past the 20 ms budget while still running
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError):
        breaker.call(ok())
    release.set()
    worker.join(5.0)
    # Returning late is not a second failure, and not a success either.
    assert breaker.state is OPEN and breaker.consecutive_failures == 0


def test_only_as_many_half_open_probes_run_at_once_as_configured() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=1, half_open_probes=1)
    with pytest.raises(LayerError):
        breaker.call(boom)
    clock.advance(5.0)
    inner: list[str] = []

    def probe() -> str:
        # A second call while the probe is in flight is refused.
        with pytest.raises(CircuitOpenError):
            breaker.call(ok())
        inner.append("refused")
        return "ok"

    breaker.call(probe)
    assert inner == ["refused"] and breaker.state is CLOSED


# --- the guarded scorer ---------------------------------------------------------------------


class _Scorer:
    name = "stub"
    version = "1"

    def __init__(self, output: Any) -> None:
        self.output = output

    def score(self, batch: ScoringBatch) -> Any:
        return self.output

    def save(self, directory: Any) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Any) -> Any:
        raise NotImplementedError


BATCH = rule_batch([make_tx(0), make_tx(1)])


@pytest.mark.parametrize(
    "output",
    [np.array([0.1]), np.array([0.1, np.nan]), np.array([0.1, 1.5]), [0.1, 0.2]],
    ids=["wrong-shape", "nan", "out-of-range", "not-an-array"],
)
def test_a_scorer_breaking_the_contract_is_a_layer_failure(output: Any) -> None:
    clock = FakeClock()
    guarded = GuardedScorer(_Scorer(output), make_breaker(clock, failure_threshold=1))
    with pytest.raises(LayerError):
        guarded.score(BATCH)
    assert guarded.breaker.state is OPEN


def test_a_guarded_scorer_is_scored_like_its_scorer() -> None:
    inner: Scorer = _Scorer(np.array([0.2, 0.9]))
    guarded = GuardedScorer(inner, make_breaker(FakeClock()))
    assert (guarded.name, guarded.version) == ("stub", "1")
    assert guarded.score(BATCH).tolist() == [0.2, 0.9]


def test_strict_latency_raises_layer_timeout_for_a_slow_call() -> None:
    clock = FakeClock()

    class Slow(_Scorer):
        def score(self, batch: ScoringBatch) -> Any:
            clock.advance(0.050)
            return np.array([0.2, 0.9])

    guarded = GuardedScorer(Slow(None), make_breaker(clock), strict_latency=True)
    with pytest.raises(LayerTimeout) as caught:
        guarded.score(BATCH)
    assert caught.value.elapsed_ms == pytest.approx(50.0)
    assert caught.value.budget_ms == 20.0


# --- the state machine, against a reference model ------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, failures, slow calls and clock advances; the breaker must agree with
    a plain reference model of the documented behaviour at every step."""

    @initialize(
        threshold=st.integers(1, 4),
        probes=st.integers(1, 3),
        reset=st.sampled_from([0.5, 2.0, 5.0]),
    )
    def setup(self, threshold: int, probes: int, reset: float) -> None:
        self.clock = FakeClock()
        self.settings = BreakerSettings(
            failure_threshold=threshold,
            reset_timeout_s=reset,
            latency_budget_ms=20.0,
            half_open_probes=probes,
        )
        self.breaker = CircuitBreaker("m", self.settings, clock=self.clock)
        self.state = CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_at = 0.0

    def _model_state(self) -> BreakerState:
        if self.state is OPEN and self.clock.now - self.opened_at >= self.settings.reset_timeout_s:
            self.state, self.successes = HALF_OPEN, 0
        return self.state

    def _model_outcome(self, failed: bool) -> None:
        if self.state is CLOSED:
            self.failures = self.failures + 1 if failed else 0
            if self.failures >= self.settings.failure_threshold:
                self.state, self.opened_at, self.failures = OPEN, self.clock.now, 0
        elif self.state is HALF_OPEN:
            if failed:
                self.state, self.opened_at = OPEN, self.clock.now
            else:
                self.successes += 1
                if self.successes >= self.settings.half_open_probes:
                    self.state, self.failures = CLOSED, 0

    @rule(latency_ms=st.sampled_from([0.0, 5.0, 19.9, 20.1, 100.0]), fails=st.booleans())
    def call(self, latency_ms: float, fails: bool) -> None:
        expected = self._model_state()

        def layer() -> str:
            self.clock.advance(latency_ms / 1000.0)
            if fails:
                raise ValueError("injected")
            return "ok"

        if expected is OPEN:
            with pytest.raises(CircuitOpenError):
                self.breaker.call(layer)
            return
        if fails:
            with pytest.raises(LayerError):
                self.breaker.call(layer)
        else:
            assert self.breaker.call(layer).overran == (latency_ms > 20.0)
        self._model_outcome(fails or latency_ms > 20.0)

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.5, 5.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.breaker.state is self._model_state()

    @invariant()
    def closed_means_under_the_threshold(self) -> None:
        if self.breaker.state is CLOSED:
            assert self.breaker.consecutive_failures < self.settings.failure_threshold


BreakerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_breaker_state_machine = BreakerMachine.TestCase
