"""A scoring layer that raises or hangs inside the worker's real scoring parts (issue 8,
item 4): the engine and decider ``fraudstream worker`` builds (``build_scoring``: a
trained bundle, Redis features, breakers, the routed decider under the hard deadline)
with its Prometheus hooks, one layer swapped for a switchable fault.

What must hold: the layer's breaker opens, decisions go on without it (degraded, with
the fallback thresholds), the metrics show the failures and the breaker state, and the
breaker closes again once the layer recovers. A hang costs at most the hard deadline:
the batch it catches gets the configured default action flagged ``timeout_default``
(returned while the layer is still stuck, so no decision waits for it), and later
batches run beside the stuck call instead of queueing behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from fraudstream.metrics import (
    BREAKER_STATE_VALUES,
    EngineMetrics,
    PrometheusEngineHooks,
    PrometheusStreamHooks,
)
from fraudstream.wire import Decision, Transaction
from models.base import Scores, ScoringBatch
from streams.worker import ScoringParts, build_scoring
from tests.streams.harness import transaction

pytestmark = pytest.mark.timeout(180)

LAYER = "gnn"
DEADLINE_MS = 600.0
BUDGET_MS = 150.0
RESET_S = 1.0


class FaultSwitch:
    """A layer that scores like ``inner``, raises, or blocks until released."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.mode = "ok"
        self.release = threading.Event()
        self.stuck = 0  # calls blocked right now

    @property
    def name(self) -> str:
        return str(self.inner.name)

    @property
    def version(self) -> str:
        return str(self.inner.version)

    def score(self, batch: ScoringBatch) -> Scores:
        if self.mode == "raise":
            raise RuntimeError("injected failure")
        if self.mode == "hang":
            self.stuck += 1
            try:
                self.release.wait(60)
            finally:
                self.stuck -= 1
        scores: Scores = self.inner.score(batch)
        return scores


class Rig:
    def __init__(self, parts: ScoringParts, registry: CollectorRegistry, settings: Any) -> None:
        self.parts = parts
        self.registry = registry
        self.settings = settings
        engine = parts.decider.models.champion.engine
        self.switch = FaultSwitch(engine.layers[LAYER])
        engine.layers[LAYER] = self.switch
        self.sent = 0

    async def batch(self, size: int = 16) -> list[Decision]:
        transactions = [
            msgspec.convert(
                {**transaction(self.sent + i, start=datetime(2025, 3, 1, tzinfo=UTC))},
                Transaction,
                strict=False,
            )
            for i in range(size)
        ]
        self.sent += size
        decisions = await self.parts.decider.decide(transactions, datetime.now(UTC))
        assert [d.transaction_id for d in decisions] == [t.transaction_id for t in transactions]
        return decisions

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def breaker(self) -> float:
        return self.metric("fraudstream_breaker_state", layer=LAYER)


@pytest.fixture
def rig(make_settings: Any, engine_bundle: Path) -> Rig:
    settings = make_settings(
        models__bundle_dir=str(engine_bundle),
        models__gnn_refresh_check_s="0",
        scoring__deadline_ms=str(DEADLINE_MS),
        scoring__default_action="decline",  # fail-closed, to tell it from the scores
        scoring__fallback_review_threshold="0.05",
        scoring__fallback_decline_threshold="0.95",
        breaker__latency_budget_ms=str(BUDGET_MS),
        breaker__layer_latency_budget_ms=f'{{"rules": {BUDGET_MS}}}',  # one budget for all
        breaker__failure_threshold="2",
        breaker__reset_timeout_s=str(RESET_S),
        # Redis answers in time even on a loaded machine: only the injected layer fails.
        features__timeout_ms="2000",
    )
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    parts = build_scoring(settings, PrometheusStreamHooks(metrics), PrometheusEngineHooks(metrics))
    return Rig(parts, registry, settings)


def assert_without_the_layer(decisions: Sequence[Decision], settings: Any) -> None:
    """Decided by the fallback ensemble: degraded, the layer not run, fallback thresholds."""
    scoring = settings.scoring
    for d in decisions:
        assert d.degraded and not d.timeout_default
        assert LAYER not in d.layers_run and d.layers_run
        if any(r.layer == "rules" for r in d.reasons):
            continue  # a rule may decide by itself
        expected = (
            "decline"
            if d.score >= scoring.fallback_decline_threshold
            else "review"
            if d.score >= scoring.fallback_review_threshold
            else "approve"
        )
        assert d.decision == expected, d


async def recover(rig: Rig) -> list[Decision]:
    """Batches until the breaker's probe has closed it again (after its reset time)."""
    time.sleep(RESET_S + 0.1)
    decisions = await rig.batch()
    assert rig.breaker() == BREAKER_STATE_VALUES["closed"]
    return decisions


async def test_a_layer_that_raises_is_skipped_then_taken_back(rig: Rig) -> None:
    healthy = await rig.batch()
    assert all(LAYER in d.layers_run and not d.degraded for d in healthy)

    rig.switch.mode = "raise"
    failing = [await rig.batch() for _ in range(2)]  # failure_threshold = 2
    assert rig.breaker() == BREAKER_STATE_VALUES["open"]
    assert rig.metric("fraudstream_layer_results_total", layer=LAYER, status="error") == 2
    for decisions in failing:
        assert_without_the_layer(decisions, rig.settings)

    skipped = await rig.batch()  # open: not even called
    assert_without_the_layer(skipped, rig.settings)
    assert rig.metric("fraudstream_layer_results_total", layer=LAYER, status="skipped") == 1

    rig.switch.mode = "ok"
    back = await recover(rig)
    assert all(LAYER in d.layers_run and not d.degraded for d in back)
    assert rig.metric("fraudstream_layer_results_total", layer=LAYER, status="ok") == 2


async def test_a_hung_layer_costs_one_deadline_then_its_breaker_opens(rig: Rig) -> None:
    await rig.batch()
    rig.switch.mode = "hang"
    started = time.monotonic()
    caught = await rig.batch()
    # Answered while the layer is still stuck: nothing waited for it.
    assert rig.switch.stuck == 1
    assert time.monotonic() - started < 10 * DEADLINE_MS / 1000
    assert all(d.timeout_default and d.decision == "decline" and d.degraded for d in caught)

    # Later batches do not queue behind the stuck call. The breaker counts each call in
    # flight past its budget; after failure_threshold of them it opens and the layer is
    # skipped: decisions come from the other layers again, not defaults.
    decisions: list[Decision] = []
    for _ in range(4):
        decisions = await rig.batch()
        if not decisions[0].timeout_default:
            break
    assert rig.breaker() == BREAKER_STATE_VALUES["open"]
    assert_without_the_layer(decisions, rig.settings)
    assert 1 <= rig.switch.stuck <= 2  # bounded: an open breaker calls it no more

    # Recovery: the stuck calls return (their results are thrown away), the next probe
    # succeeds and the breaker closes.
    rig.switch.mode = "ok"
    rig.switch.release.set()
    back = await recover(rig)
    assert all(LAYER in d.layers_run and not d.degraded for d in back)
    assert rig.switch.stuck == 0
