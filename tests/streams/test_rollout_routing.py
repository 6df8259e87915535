"""Champion, challenger and canary with fake engines: what is decided live, what goes to
shadow, and that the challenger never changes or delays the champion."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

from fraudstream.wire import Transaction
from models.base import ScoringBatch
from streams.rollout import RolloutPlan, in_canary
from tests.streams.rollout_factories import (
    T0,
    FakeEngine,
    Reports,
    fake_features,
    make_decider,
    make_transactions,
    shadow_of,
)

# --- routing -------------------------------------------------------------------------


async def test_without_a_challenger_the_champion_decides_and_nothing_is_shadowed() -> None:
    decider = make_decider(FakeEngine("a"), plan=RolloutPlan(canary_share=0.5))
    txs = make_transactions(50)
    live = await decider.decide(txs, T0)
    assert [d.transaction_id for d in live] == [t.transaction_id for t in txs]
    assert {d.model_version for d in live} == {"a"}
    assert decider.take_shadow() == []


async def test_decided_at_counts_the_feature_lookup_for_champion_and_challenger() -> None:
    # The engine adds its own scoring time to the ``now`` it is given; the router must
    # add the feature lookup (the Redis script: most of a step) before handing it on.
    ticks = [100.0]

    def slow_features(transactions: Sequence[Transaction]) -> ScoringBatch:
        ticks[0] += 0.009
        return fake_features(transactions)

    decider = make_decider(
        FakeEngine("a"), FakeEngine("b"), features=slow_features, clock=lambda: ticks[0]
    )
    live = await decider.decide(make_transactions(3), T0)
    assert {d.decided_at for d in live} == {T0 + timedelta(milliseconds=9)}
    assert {d.decided_at for d in shadow_of(decider)} == {T0 + timedelta(milliseconds=9)}


async def test_the_challenger_shadows_every_transaction_and_never_acts() -> None:
    reports = Reports()
    decider = make_decider(FakeEngine("a"), FakeEngine("b", 0.9), reports=reports)
    txs = make_transactions(40)
    live = await decider.decide(txs, T0)
    assert {d.model_version for d in live} == {"a"}
    shadow = shadow_of(decider)
    assert [d.transaction_id for d in shadow] == [t.transaction_id for t in txs]
    assert {(d.model_version, d.score) for d in shadow} == {("b", 0.9)}
    assert decider.take_shadow() == []  # taken once
    assert reports.routed == [(40, 0, 40)]


async def test_the_canary_is_decided_by_the_challenger_and_both_are_recorded() -> None:
    decider = make_decider(FakeEngine("a"), FakeEngine("b"), RolloutPlan(canary_share=0.3))
    txs = make_transactions(300)
    live = {d.transaction_id: d.model_version for d in await decider.decide(txs, T0)}
    shadow = {d.transaction_id: d.model_version for d in shadow_of(decider)}
    canary = {t.transaction_id for t in txs if in_canary(t.transaction_id, 0.3)}
    assert 0 < len(canary) < len(txs)
    assert {i for i, v in live.items() if v == "b"} == canary
    assert set(live) == set(shadow) == {t.transaction_id for t in txs}
    assert all(live[i] != shadow[i] for i in live)  # each decided once by each model


async def test_without_shadow_the_challenger_decides_only_the_canary() -> None:
    champion, challenger = FakeEngine("a"), FakeEngine("b")
    plan = RolloutPlan(canary_share=0.2, shadow=False)
    decider = make_decider(champion, challenger, plan)
    txs = make_transactions(200)
    live = await decider.decide(txs, T0)
    canary = [t.transaction_id for t in txs if in_canary(t.transaction_id, 0.2)]
    assert challenger.seen == canary
    assert [d.transaction_id for d in live if d.model_version == "b"] == canary
    assert [(d.transaction_id, d.model_version) for d in shadow_of(decider)] == [
        (i, "a") for i in canary
    ]


async def test_the_whole_traffic_can_move_to_the_challenger() -> None:
    decider = make_decider(FakeEngine("a"), FakeEngine("b"), RolloutPlan(canary_share=1.0))
    live = await decider.decide(make_transactions(30), T0)
    assert {d.model_version for d in live} == {"b"}
    assert {d.model_version for d in shadow_of(decider)} == {"a"}


async def test_a_failing_challenger_changes_nothing_live() -> None:
    reports = Reports()
    decider = make_decider(
        FakeEngine("a"), FakeEngine("b", fail=True), RolloutPlan(canary_share=0.5), reports=reports
    )
    live = await decider.decide(make_transactions(20), T0)
    assert {d.model_version for d in live} == {"a"}
    assert decider.take_shadow() == []
    assert [reason for reason, _ in reports.failed] == ["error"]


async def test_a_challenger_default_on_the_canary_leaves_the_champion_live() -> None:
    decider = make_decider(
        FakeEngine("a"), FakeEngine("b", timeout_default=True), RolloutPlan(canary_share=1.0)
    )
    live = await decider.decide(make_transactions(10), T0)
    assert {d.model_version for d in live} == {"a"}
    assert {d.model_version for d in shadow_of(decider)} == {"b"}


async def test_a_slow_challenger_neither_delays_nor_changes_the_champion() -> None:
    gate, reports = threading.Event(), Reports()
    slow = FakeEngine("b", gate=gate)
    champion = FakeEngine("a")
    decider = make_decider(
        champion, slow, RolloutPlan(canary_share=0.5), timeout_s=0.3, reports=reports
    )
    try:
        first = await decider.decide(make_transactions(10), T0)
        # Still busy with the first batch: skipped, not waited for.
        second = await decider.decide(make_transactions(10, start=10), T0)
    finally:
        gate.set()
    assert {d.model_version for d in first + second} == {"a"}
    assert len(champion.seen) == 20
    assert [reason for reason, _ in reports.failed] == ["timeout", "busy"]
