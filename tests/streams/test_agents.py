"""The agents' small pure helpers (the agents themselves run in the integration tests)."""

from __future__ import annotations

from fraudstream.metrics import EngineMetrics, PrometheusStreamHooks
from streams.agents import ScoringObserver, partition_lags
from streams.scoring import NoHooks

HIGH = {("tx", 0): 100, ("tx", 1): 7, ("labels", 0): 3, ("tx-changelog", 0): 50}


def test_lag_is_high_water_minus_committed_for_the_input_topics_only() -> None:
    committed = {("tx", 0): 60, ("labels", 0): 3}
    lags = partition_lags([*HIGH, ("tx", 2)], HIGH.get, committed.get, {"tx", "labels"})
    # Nothing committed yet counts from 0; an unknown high water is left out.
    assert lags == {("labels", 0): 0, ("tx", 0): 40, ("tx", 1): 7}


def test_a_committed_offset_past_a_stale_high_water_is_no_negative_lag() -> None:
    assert partition_lags([("tx", 0)], {("tx", 0): 5}.get, {("tx", 0): 9}.get, {"tx"}) == {
        ("tx", 0): 0
    }


def test_the_prometheus_hooks_observe_the_scoring_agent_and_plain_hooks_do_not() -> None:
    assert isinstance(PrometheusStreamHooks(EngineMetrics()), ScoringObserver)
    assert not isinstance(NoHooks(), ScoringObserver)
