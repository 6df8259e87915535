"""The decider in a child process (``worker.decider_process``): decisions, shadow,
labels and metrics across the pipe; a child that fails to start, dies or stalls; and
the real engine in the child. The fakes are in ``decider_fakes`` (a spawned child
imports its build by name)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fraudstream.errors import DeciderProcessDied, DeciderStartError, ReportedError
from fraudstream.metrics import (
    BREAKER_STATE_VALUES,
    EngineMetrics,
    PrometheusEngineHooks,
    PrometheusStreamHooks,
)
from fraudstream.settings import Settings
from fraudstream.wire import LabelEvent, Transaction
from models.decisions import ENGINE_ERROR_REASON, TIMEOUT_REASON
from streams.decider_child import Build, DecideRequest, decide_request
from streams.decider_process import DeciderProcess
from streams.worker import build_scoring_in_child
from tests.streams.decider_fakes import (
    CRASH,
    FAKE_VERSION,
    STALL,
    build_fake,
    build_without_champion,
)
from tests.training.factories import engine_settings, last_day_batch

ALL_LAYERS = ["gnn", "iforest", "rules", "xgboost"]
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once


class Failures:
    """The stream hooks' ``pipeline_failed`` calls, beside the Prometheus ones."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self.prometheus = PrometheusStreamHooks(metrics)
        self.errors: list[BaseException] = []

    def pipeline_failed(self, error: BaseException) -> None:
        self.errors.append(error)
        self.prometheus.pipeline_failed(error)

    def batch_processed(self, outcome: Any, size: int, seconds: float) -> None:
        return None

    def labels_processed(self, outcome: Any, size: int, seconds: float) -> None:
        return None


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return engine_settings(
        tmp_path / "no-bundle",
        FRAUDSTREAM__WORKER__DATA_DIR=str(tmp_path / "data"),
        FRAUDSTREAM__FEATURES__LABEL_STORE_DIR=str(tmp_path / "labels"),
        **env,
    )


@pytest.fixture
def start_decider(
    tmp_path: Path,
) -> Iterator[Callable[..., tuple[DeciderProcess, EngineMetrics, Failures]]]:
    started: list[DeciderProcess] = []

    def start(
        build: Build = build_fake, **env: str
    ) -> tuple[DeciderProcess, EngineMetrics, Failures]:
        metrics = EngineMetrics(CollectorRegistry())
        failures = Failures(metrics)
        decider = DeciderProcess(
            settings_for(tmp_path, **env), failures, PrometheusEngineHooks(metrics), build=build
        )
        started.append(decider)
        return decider, metrics, failures

    yield start
    for decider in started:
        decider.close()


def transactions(*ids: str) -> list[Transaction]:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    return [
        Transaction(
            schema_version=1,
            transaction_id=tx_id,
            event_time=at,
            card_id=f"card-{tx_id}",
            terminal_id="terminal-1",
            amount=12.5,
            currency="EUR",
        )
        for tx_id in ids
    ]


def labels(count: int) -> list[LabelEvent]:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    return [
        LabelEvent(
            schema_version=1,
            transaction_id=f"tx-{i}",
            card_id="card-1",
            terminal_id="terminal-1",
            event_time=at,
            label_time=at + timedelta(days=3),
            is_fraud=True,
            source="chargeback",
        )
        for i in range(count)
    ]


async def decide_until(
    decider: DeciderProcess, ready: Callable[[Any], bool], timeout_s: float = 120.0
) -> Any:
    """Decide a one-transaction batch until ``ready(decision)`` (a child being replaced
    answers with defaults meanwhile)."""
    give_up = time.monotonic() + timeout_s
    while True:
        [decision] = await decider.decide(transactions("probe"), datetime.now(UTC))
        if ready(decision) or time.monotonic() > give_up:
            return decision
        await asyncio.sleep(0.2)


async def test_decisions_shadow_and_metrics_come_back_from_the_child(
    start_decider: Callable[..., tuple[DeciderProcess, EngineMetrics, Failures]],
) -> None:
    decider, metrics, _ = start_decider()
    assert (decider.info.version, decider.source) == ("fake-engine", "fake bundle")
    decisions = await decider.decide(transactions("a", "b", "c"), datetime.now(UTC))
    assert [d.transaction_id for d in decisions] == ["a", "b", "c"]
    assert all(d.model_version == FAKE_VERSION and not d.degraded for d in decisions)
    assert [o.value for o in decider.take_shadow()] == [b"shadow-value"]
    assert decider.take_shadow() == []  # taken once
    # The child's hook calls, replayed on this process's registry.
    sample = metrics.registry.get_sample_value
    assert sample("fraudstream_layer_results_total", {"layer": "rules", "status": "ok"}) == 1
    open_ = BREAKER_STATE_VALUES["open"]
    assert sample("fraudstream_breaker_state", {"layer": "xgboost"}) == open_
    errors = {"error": "FeatureStoreTimeout"}  # the child's error type, not the wrapper's
    assert sample("fraudstream_feature_store_errors_total", errors) == 1
    assert decider.close() == 0  # it finished when asked, it was not killed


async def test_labels_reach_the_childs_gnn_before_the_next_batch(
    start_decider: Callable[..., tuple[DeciderProcess, EngineMetrics, Failures]],
) -> None:
    decider, _, _ = start_decider()
    decider.observe_labels(labels(3))
    decider.observe_labels(labels(4))
    [decision] = await decider.decide(transactions("a"), datetime.now(UTC))
    assert decision.score == pytest.approx(0.007)  # the fake scores labels seen / 1000


def test_a_child_that_cannot_load_its_engine_stops_start_up_with_its_error(
    start_decider: Callable[..., tuple[DeciderProcess, EngineMetrics, Failures]],
) -> None:
    with pytest.raises(DeciderStartError) as raised:
        start_decider(build_without_champion)
    assert raised.value.type_name == "NoChampionError"
    assert "fraud-engine" in raised.value.message


async def test_a_child_that_dies_is_replaced_and_its_batch_gets_the_engine_error_default(
    start_decider: Callable[..., tuple[DeciderProcess, EngineMetrics, Failures]],
) -> None:
    decider, metrics, failures = start_decider()
    decisions = await decider.decide(transactions("x", CRASH), datetime.now(UTC))
    assert len(decisions) == 2
    assert all(d.degraded and not d.timeout_default for d in decisions)
    assert all(d.reasons == [ENGINE_ERROR_REASON] for d in decisions)
    assert {d.model_version for d in decisions} == {FAKE_VERSION}
    assert any(isinstance(e, DeciderProcessDied) for e in failures.errors)
    decision = await decide_until(decider, lambda d: not d.degraded)
    assert not decision.degraded, "no new child answered within two minutes"
    sample = metrics.registry.get_sample_value
    assert sample("fraudstream_decider_restarts_total", {"reason": "died"}) == 1


async def test_labels_that_arrive_while_a_child_is_replaced_reach_the_new_one(
    start_decider: Callable[..., tuple[DeciderProcess, EngineMetrics, Failures]],
) -> None:
    decider, _, _ = start_decider()
    decider.observe_labels(labels(2))  # the first child's: gone with it
    await decider.decide(transactions(CRASH), datetime.now(UTC))
    # The batch's engine-error default came back once the child was seen gone, and a
    # new one takes seconds to start: these arrive while there is none.
    decider.observe_labels(labels(5))
    decision = await decide_until(decider, lambda d: not d.degraded)
    assert not decision.degraded, "no new child answered within two minutes"
    assert decision.score == pytest.approx(0.005)  # the fake scores labels seen / 1000


async def test_a_stalled_child_gets_deadline_defaults_then_is_replaced(
    start_decider: Callable[..., tuple[DeciderProcess, EngineMetrics, Failures]],
) -> None:
    decider, metrics, _ = start_decider(
        FRAUDSTREAM__SCORING__DEADLINE_MS="200", FRAUDSTREAM__WORKER__DECIDER_STALL_S="1"
    )
    started = time.monotonic()
    decisions = await decider.decide(transactions(STALL, "y"), datetime.now(UTC))
    waited = time.monotonic() - started
    assert all(d.timeout_default and d.reasons == [TIMEOUT_REASON] for d in decisions)
    assert waited < 5.0, "the batch waited for the stalled child instead of its deadline"
    decision = await decide_until(decider, lambda d: not d.degraded)
    assert not decision.degraded, "no new child answered within two minutes"
    sample = metrics.registry.get_sample_value
    assert sample("fraudstream_decider_restarts_total", {"reason": "stalled"}) == 1
    assert sample("fraudstream_decider_late_batches_total", {}) >= 1


async def test_the_real_engine_decides_in_the_child_with_its_metrics_here(
    engine_bundle: Path, tmp_path: Path
) -> None:
    settings = engine_settings(
        engine_bundle,
        FRAUDSTREAM__REDIS__URL=NOWHERE,
        FRAUDSTREAM__WORKER__DATA_DIR=str(tmp_path / "data"),
        FRAUDSTREAM__FEATURES__LABEL_STORE_DIR=str(tmp_path / "labels"),
    )
    metrics = EngineMetrics(CollectorRegistry())
    parts = build_scoring_in_child(
        settings, PrometheusStreamHooks(metrics), PrometheusEngineHooks(metrics)
    )
    try:
        batch = last_day_batch(20)
        now = batch.transactions[-1].event_time
        decisions = await parts.decider.decide(batch.transactions, now)
        assert len(decisions) == 20
        assert all(sorted(d.layers_run) == ALL_LAYERS and d.degraded for d in decisions)
        assert not any(d.timeout_default for d in decisions)
        assert parts.info.version in decisions[0].model_version
        sample = metrics.registry.get_sample_value
        unavailable = {"error": "FeatureStoreUnavailable"}
        assert sample("fraudstream_feature_store_errors_total", unavailable)
        assert sample("fraudstream_layer_results_total", {"layer": "xgboost", "status": "ok"})
        assert parts.apply_labels([]) == 0
    finally:
        parts.close()


def test_a_reported_error_keeps_the_childs_type_name() -> None:
    error = ReportedError("FeatureStoreTimeout", "took 51 ms")
    assert (error.type_name, str(error)) == (
        "FeatureStoreTimeout",
        "FeatureStoreTimeout: took 51 ms",
    )


class BudgetRecorder:
    """A decider that records the budget it is given."""

    def __init__(self) -> None:
        self.budgets: list[float | None] = []
        self.models = SimpleNamespace(champion=SimpleNamespace(model_version="v3:recorded"))

    async def decide(
        self, transactions: Any, now: datetime, *, budget_s: float | None = None
    ) -> list[Any]:
        self.budgets.append(budget_s)
        return []

    def take_shadow(self) -> list[Any]:
        return []


async def test_the_child_gives_a_batch_what_is_left_of_the_deadline_since_it_was_taken() -> None:
    recorder = BudgetRecorder()
    parts = SimpleNamespace(decider=recorder)
    now = datetime.now(UTC)
    fresh = DecideRequest(1, [], now, time.time())
    waited = DecideRequest(2, [], now, time.time() - 0.08)  # queued behind a late batch
    stale = DecideRequest(3, [], now, time.time() - 5.0)
    for request in (fresh, waited, stale):
        reply = await decide_request(parts, request, deadline_s=0.1)  # type: ignore[arg-type]
        assert (reply.seq, reply.champion_version) == (request.seq, "v3:recorded")
    first, second, third = recorder.budgets
    assert first is not None and 0.09 < first <= 0.1
    assert second is not None and 0.0 < second < 0.021
    assert third is not None and third < 0  # the RoutedDecider's defaults, at once
