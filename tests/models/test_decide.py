"""The decision function: layers behind breakers, fallbacks, deadlines, rules, reasons.

Stand-in layers (a logistic function of one feature each) keep these tests fast and
exact; the failing, slow and hanging behaviours are injected around them, with a fake
clock except in the one test that needs a real thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, ClassVar

import msgspec
import numpy as np
import pytest

from features.matrix import FeatureMatrix
from fraudstream.errors import FeatureStoreTimeout, FeatureStoreUnavailable
from fraudstream.settings import BreakerSettings, ScoringSettings
from fraudstream.wire.schemas import Decision, Reason, Transaction
from models.base import Scores, ScoringBatch
from models.breaker import BreakerState
from models.decide import (
    Deadline,
    EnginePipeline,
    LayerReport,
    ScoringEngine,
    decide,
)
from models.decisions import default_decisions
from models.ensemble import MetaModel
from models.ensemble.stacking import sigmoid
from models.reasons import ReasonSettings
from models.rules import InMemoryListStore, ListStoreUnavailable, RuleBook, RulesScorer, parse_rules
from tests.models.factories import CONTRACT_FEATURES, batch_from_world, synthetic_world
from tests.models.factories_rules import rule_toml

NOW = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)
SCORING = ScoringSettings(
    review_threshold=0.3,
    decline_threshold=0.8,
    fallback_review_threshold=0.1,
    fallback_decline_threshold=0.6,
)
BREAKER = BreakerSettings(failure_threshold=3, reset_timeout_s=5.0, latency_budget_ms=20.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class StandIn:
    """A layer scoring ``sigmoid(weight * feature + bias)``, with injectable faults."""

    name: str
    feature: str
    weight: float
    bias: float
    clock: FakeClock | None = None
    mode: str = "ok"  # ok | raise | slow | nan
    delay_s: float = 0.030
    calls: int = 0
    explained_rows: list[int] = field(default_factory=list)
    explains: ClassVar[bool] = False

    @property
    def version(self) -> str:
        return f"{self.name}-1"

    def score(self, batch: ScoringBatch) -> Scores:
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError(f"{self.name} lost its model")
        if self.mode == "slow" and self.clock is not None:
            self.clock.advance(self.delay_s)
        x = np.nan_to_num(batch.features.select([self.feature]).values[:, 0], nan=0.0)
        scores = sigmoid(self.weight * np.clip(x, -50, 50) + self.bias)
        return np.full(len(batch), np.nan) if self.mode == "nan" else scores

    def save(self, directory: Any) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Any) -> Any:
        raise NotImplementedError


class ExplainingStandIn(StandIn):
    def explain(self, batch: ScoringBatch, scores: Scores, top: int = 3) -> list[list[Reason]]:
        self.explained_rows.append(len(batch))
        values = batch.features.select([self.feature]).values[:, 0]
        return [
            [
                Reason(
                    code=f"TREES_{self.feature}", text=f"{self.feature} = {v:.1f}", layer=self.name
                )
            ]
            for v in values
        ]


def make_layers(clock: FakeClock | None = None) -> dict[str, StandIn]:
    return {
        "trees": ExplainingStandIn("trees", "amount_to_card_mean_30d", 1.2, -4.0, clock),
        "gnn": StandIn("gnn", "device_card_count_7d", 0.8, -3.0, clock),
        # Reads a feature the transaction itself gives: it still varies with the store down.
        "iforest": StandIn("iforest", "amount", 0.01, -3.0, clock),
    }


RULES_TEXT = (
    rule_toml("deny", "card_denylisted", "decline")
    + rule_toml("vip", "card_allowlisted", "allow")
    + rule_toml("huge", "amount > 5000", "review")
    + rule_toml("night", "is_night = 1", "adjust", adjust=0.05)
)


def make_rules(lists: Any = None) -> RulesScorer:
    return RulesScorer(parse_rules(RULES_TEXT, "rules.toml", CONTRACT_FEATURES), lists)


@cache
def meta_model() -> MetaModel:
    world = synthetic_world(6000, seed=31)
    batch = batch_from_world(world)
    layers = make_layers()
    scores = {name: layer.score(batch) for name, layer in layers.items()}
    flags = make_rules().evaluate(batch).flags()
    return MetaModel.fit(scores, world.labels, rule_flags=flags)


@cache
def scoring_batch(rows: int = 200, seed: int = 32) -> ScoringBatch:
    return batch_from_world(synthetic_world(rows, seed=seed, days=2.0))


@dataclass
class Rig:
    engine: ScoringEngine
    layers: dict[str, StandIn]
    clock: FakeClock
    reports: list[LayerReport]
    changes: list[tuple[str, BreakerState, BreakerState]]
    errors: list[BaseException]

    def statuses(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for report in self.reports:
            last[report.layer] = report.status
        return last


def make_rig(
    scoring: ScoringSettings = SCORING,
    lists: Any = None,
    reasons: ReasonSettings | None = None,
    breaker: BreakerSettings = BREAKER,
) -> Rig:
    clock = FakeClock()
    layers = make_layers(clock)
    reports: list[LayerReport] = []
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    errors: list[BaseException] = []
    engine = ScoringEngine(
        meta=meta_model(),
        layers=layers,
        rules=make_rules(lists),
        scoring=scoring,
        breaker=breaker,
        reasons=reasons,
        clock=clock,
        on_layer_result=reports.append,
        on_breaker_change=lambda *change: changes.append(change),
        on_engine_error=errors.append,
    )
    return Rig(engine, layers, clock, reports, changes, errors)


def expected_outcomes(probability: Any, review: float, decline: float) -> list[str]:
    return [
        "decline" if p >= decline else "review" if p >= review else "approve" for p in probability
    ]


def fallback_outcomes(probability: Any) -> list[str]:
    """Outcomes under the fallback thresholds, checked to differ from the normal ones so
    that a test using them shows which thresholds were applied."""
    fallback = expected_outcomes(probability, 0.1, 0.6)
    assert fallback != expected_outcomes(probability, 0.3, 0.8)
    return fallback


def stacked_probability(rig: Rig, batch: ScoringBatch, layers: tuple[str, ...]) -> Any:
    scores = {n: rig.layers[n].score(batch) for n in layers}
    evaluation = make_rules().evaluate(batch)
    stacked = meta_model().stack(scores, evaluation.flags(), len(batch))
    return np.clip(stacked.scores + evaluation.adjustment, 0, 1)


# --- the healthy path ----------------------------------------------------------------------


def test_every_transaction_gets_a_valid_decision_from_all_layers() -> None:
    rig = make_rig()
    batch = scoring_batch()
    decisions = decide(batch, rig.engine, NOW)
    assert [d.transaction_id for d in decisions] == [t.transaction_id for t in batch.transactions]
    for d in decisions:
        assert msgspec.json.decode(msgspec.json.encode(d), type=Decision) == d
        assert d.layers_run == ["rules", "trees", "gnn", "iforest"]
        assert not d.degraded and not d.timeout_default
        assert d.model_version == f"{meta_model().version}+{make_rules().version}"
    probability = stacked_probability(rig, batch, ("trees", "gnn", "iforest"))
    assert [d.score for d in decisions] == pytest.approx(probability.tolist())
    assert [d.decision for d in decisions] == expected_outcomes(probability, 0.3, 0.8)
    assert {"approve", "review", "decline"} <= {d.decision for d in decisions}
    assert {r.status for r in rig.reports} == {"ok"}


def test_decided_at_and_latency_come_from_the_injected_clock() -> None:
    rig = make_rig()
    rig.layers["gnn"].mode, rig.layers["gnn"].delay_s = "slow", 0.012
    tx = scoring_batch().transactions[0]
    decision = rig.engine.decide(scoring_batch(), NOW)[0]
    assert decision.decided_at == NOW + timedelta(milliseconds=12)
    assert decision.latency_ms == pytest.approx((NOW - tx.event_time).total_seconds() * 1000 + 12)


# --- a layer that raises -------------------------------------------------------------------


def test_a_failing_layer_is_skipped_with_fallbacks_and_comes_back_after_recovery() -> None:
    rig = make_rig()
    batch = scoring_batch()
    gnn = rig.layers["gnn"]
    gnn.mode = "raise"
    for _ in range(3):
        decisions = rig.engine.decide(batch, NOW)
        assert rig.statuses()["gnn"] == "error"
    assert ("gnn", BreakerState.CLOSED, BreakerState.OPEN) in rig.changes
    probability = stacked_probability(rig, batch, ("trees", "iforest"))
    assert [d.score for d in decisions] == pytest.approx(probability.tolist())
    assert [d.decision for d in decisions] == fallback_outcomes(probability)
    assert all(d.layers_run == ["rules", "trees", "iforest"] and d.degraded for d in decisions)

    calls = gnn.calls
    rig.engine.decide(batch, NOW)
    assert gnn.calls == calls and rig.statuses()["gnn"] == "skipped"

    gnn.mode = "ok"
    rig.clock.advance(5.0)
    decisions = rig.engine.decide(batch, NOW)  # the half-open probe succeeds
    assert rig.engine.breakers["gnn"].state is BreakerState.CLOSED
    assert all(d.layers_run == ["rules", "trees", "gnn", "iforest"] for d in decisions)
    assert not any(d.degraded for d in decisions)


def test_a_layer_returning_nan_counts_as_failed() -> None:
    rig = make_rig()
    rig.layers["iforest"].mode = "nan"
    decisions = rig.engine.decide(scoring_batch(), NOW)
    assert rig.statuses()["iforest"] == "error"
    assert all("iforest" not in d.layers_run and d.degraded for d in decisions)


# --- a slow layer --------------------------------------------------------------------------


def test_a_slow_layer_is_used_until_its_breaker_opens_then_skipped() -> None:
    rig = make_rig()
    batch = scoring_batch()
    rig.layers["trees"].mode = "slow"  # 30 ms against a 20 ms budget
    for _ in range(3):
        decisions = rig.engine.decide(batch, NOW)
        assert rig.statuses()["trees"] == "slow"
        assert all("trees" in d.layers_run for d in decisions)
    assert rig.engine.breakers["trees"].state is BreakerState.OPEN
    # Its scores were right, just late: until it opened, decisions were not degraded.
    assert not any(d.degraded for d in decisions)
    decisions = rig.engine.decide(batch, NOW)
    assert rig.statuses()["trees"] == "skipped"
    assert all(d.layers_run == ["rules", "gnn", "iforest"] and d.degraded for d in decisions)
    probability = stacked_probability(rig, batch, ("gnn", "iforest"))
    assert [d.decision for d in decisions] == fallback_outcomes(probability)


def test_a_layer_with_a_budget_of_its_own_is_slow_only_past_it() -> None:
    # ops: the whole machine is slow, and the GNN may take 50 ms before it is skipped
    breaker = BreakerSettings(
        failure_threshold=3, latency_budget_ms=20.0, layer_latency_budget_ms={"gnn": 50.0}
    )
    rig = make_rig(breaker=breaker)
    rig.layers["gnn"].mode = rig.layers["trees"].mode = "slow"  # 30 ms each
    for _ in range(3):
        rig.engine.decide(scoring_batch(), NOW)
    assert rig.statuses()["gnn"] == "ok"
    assert rig.engine.breakers["gnn"].state is BreakerState.CLOSED
    assert rig.engine.breakers["trees"].state is BreakerState.OPEN  # the 20 ms for the rest
    assert rig.engine.breakers["gnn"].latency_budget_ms == 50.0


# --- the feature store is down ---------------------------------------------------------------


def transaction_only(transactions: Any) -> FeatureMatrix:
    amounts = np.array([t.amount for t in transactions], dtype=np.float64)
    return FeatureMatrix(("amount",), amounts[:, None])


@pytest.mark.parametrize(
    "failure", [FeatureStoreUnavailable("connection refused"), FeatureStoreTimeout(50.0)]
)
def test_with_the_feature_store_down_decisions_use_transaction_features_and_are_marked(
    failure: Exception,
) -> None:
    batch = scoring_batch()
    degraded = ScoringBatch(batch.transactions, transaction_only(batch.transactions), True)
    probability = stacked_probability(make_rig(), degraded, ("trees", "gnn", "iforest"))
    # With only the amount to go on, probabilities are low: put the fallback thresholds
    # inside their range so the outcomes show which thresholds were applied.
    low, high = np.quantile(probability, [0.5, 0.9])
    scoring = SCORING.model_copy(
        update={"fallback_review_threshold": low, "fallback_decline_threshold": high}
    )
    rig = make_rig(scoring)
    store_errors: list[Exception] = []

    def store(transactions: Any) -> FeatureMatrix:
        raise failure

    pipeline = EnginePipeline(
        rig.engine, store, transaction_only, on_feature_store_error=store_errors.append
    )
    decisions = pipeline.decide(batch.transactions, NOW)
    assert store_errors == [failure]
    assert len(decisions) == len(batch)
    assert all(
        d.degraded and d.layers_run == ["rules", "trees", "gnn", "iforest"] for d in decisions
    )
    fallback = expected_outcomes(probability, low, high)
    assert fallback != expected_outcomes(probability, 0.3, 0.8)
    assert [d.decision for d in decisions] == fallback


def test_with_the_feature_store_up_the_pipeline_passes_its_features() -> None:
    rig = make_rig()
    batch = scoring_batch()
    pipeline = EnginePipeline(rig.engine, lambda txs: batch.features, transaction_only)
    decisions = pipeline.decide(batch.transactions, NOW)
    assert not any(d.degraded for d in decisions)
    assert decisions == rig.engine.decide(batch, NOW)


def test_decided_at_counts_the_feature_lookup_and_the_scoring() -> None:
    rig = make_rig()
    rig.layers["gnn"].mode, rig.layers["gnn"].delay_s = "slow", 0.004
    batch = scoring_batch()

    def slow_store(transactions: Any) -> FeatureMatrix:
        rig.clock.advance(0.009)
        return batch.features

    pipeline = EnginePipeline(rig.engine, slow_store, transaction_only)
    decision = pipeline.decide(batch.transactions, NOW)[0]
    assert decision.decided_at == NOW + timedelta(milliseconds=13)
    tx = batch.transactions[0]
    assert decision.latency_ms == pytest.approx((NOW - tx.event_time).total_seconds() * 1000 + 13)


# --- the hard deadline -------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["approve", "review", "decline"])
def test_past_the_deadline_the_configured_default_is_emitted(action: str) -> None:
    scoring = SCORING.model_copy(update={"default_action": action, "deadline_ms": 100.0})
    rig = make_rig(scoring)
    rig.layers["trees"].mode, rig.layers["trees"].delay_s = "slow", 0.150
    batch = scoring_batch()
    decisions = rig.engine.decide(batch, NOW)
    assert len(decisions) == len(batch)
    for d in decisions:
        assert (d.decision, d.timeout_default, d.degraded) == (action, True, True)
        assert [r.code for r in d.reasons] == ["TIMEOUT_DEFAULT"]
    # The layers after the deadline were not even started.
    assert rig.layers["gnn"].calls == 0 and rig.statuses()["gnn"] == "deadline"
    assert decisions[0].layers_run == ["rules", "trees"]


def test_a_deadline_from_the_caller_is_honoured() -> None:
    rig = make_rig()
    expired = Deadline.after_ms(0.0, rig.clock)
    decisions = rig.engine.decide(scoring_batch(), NOW, expired)
    assert all(d.timeout_default and d.layers_run == [] for d in decisions)
    assert all(layer.calls == 0 for layer in rig.layers.values())


def test_a_hung_layer_under_wait_for_gives_timeout_defaults_and_opens_its_breaker() -> None:
    # The streaming agent's pattern, with real threads and time: the engine runs in a
    # worker thread; when wait_for gives up, the agent emits the defaults itself.
    settings = BreakerSettings(failure_threshold=1, reset_timeout_s=60.0, latency_budget_ms=20.0)
    release = threading.Event()

    class Hanging(StandIn):
        def score(self, batch: ScoringBatch) -> Scores:
            release.wait(5.0)
            return super().score(batch)

    layers = make_layers()
    layers["gnn"] = Hanging("gnn", "device_card_count_7d", 0.8, -3.0)
    engine = ScoringEngine(
        meta=meta_model(), layers=layers, rules=make_rules(), scoring=SCORING, breaker=settings
    )
    batch = scoring_batch(20)
    worker = ThreadPoolExecutor(max_workers=2)

    async def agent() -> list[Decision]:
        running = asyncio.get_running_loop().run_in_executor(worker, engine.decide, batch, NOW)
        try:
            return await asyncio.wait_for(running, 0.2)
        except TimeoutError:
            return default_decisions(batch.transactions, SCORING, NOW)

    try:
        decisions = asyncio.run(agent())
        assert all(d.timeout_default for d in decisions)
        # The hung call is still in flight; the next batch sees it past budget and skips.
        nxt = engine.decide(batch, NOW)
        assert engine.breakers["gnn"].state is BreakerState.OPEN
        assert all("gnn" not in d.layers_run and d.degraded for d in nxt)
    finally:
        release.set()
        worker.shutdown(wait=True)


# --- failures of the engine itself ------------------------------------------------------------


def test_an_engine_bug_still_emits_the_default_and_is_reported(monkeypatch: Any) -> None:
    rig = make_rig()

    def broken(*args: Any) -> Any:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(rig.engine.meta, "stack", broken)
    decisions = rig.engine.decide(scoring_batch(), NOW)
    assert all(d.decision == SCORING.default_action and not d.timeout_default for d in decisions)
    assert all(d.reasons[0].code == "ENGINE_ERROR" for d in decisions)
    assert isinstance(rig.errors[0], ZeroDivisionError)


# --- rules in decisions ------------------------------------------------------------------------


def _one_card_batch(card: str, features: dict[str, float], amount: float = 50.0) -> ScoringBatch:
    batch = scoring_batch()
    tx: Transaction = msgspec.structs.replace(batch.transactions[0], card_id=card, amount=amount)
    values = np.array([[features.get(n, 0.0) for n in CONTRACT_FEATURES]])
    return ScoringBatch([tx], FeatureMatrix(CONTRACT_FEATURES, values))


RISKY = {"amount_to_card_mean_30d": 9.0, "device_card_count_7d": 8.0, "amount": 900.0}


def test_rule_precedence_applies_to_decisions() -> None:
    lists = InMemoryListStore(
        {
            "card_denylisted": ["card_bad", "card_both"],
            "card_allowlisted": ["card_vip", "card_both"],
        }
    )
    rig = make_rig(lists=lists)

    def decide_one(card: str, feats: dict[str, float], amount: float = 50.0) -> Decision:
        return rig.engine.decide(_one_card_batch(card, feats, amount), NOW)[0]

    assert decide_one("card_plain", RISKY).decision == "decline"
    assert decide_one("card_plain", {}).decision == "approve"
    assert decide_one("card_bad", {}).decision == "decline"  # deny rule beats the model
    assert decide_one("card_vip", RISKY).decision == "approve"  # allow beats the model
    assert decide_one("card_both", {}).decision == "decline"  # deny beats allow
    huge = decide_one("card_plain", {}, amount=9000.0)  # review rule lifts approve
    assert (huge.decision, huge.reasons[0].code) == ("review", "HUGE")
    night = decide_one("card_plain", {"is_night": 1.0})
    day = decide_one("card_plain", {"is_night": 0.0})
    assert night.reasons[0].code == "NIGHT"
    assert night.score > day.score


def test_unreadable_lists_mark_decisions_degraded() -> None:
    class Down(InMemoryListStore):
        def contains(self, lookups: Any) -> Any:
            raise ListStoreUnavailable("timeout")

    rig = make_rig(lists=Down())
    decisions = rig.engine.decide(scoring_batch(), NOW)
    assert all(d.degraded and "rules" in d.layers_run for d in decisions)


# --- reasons ---------------------------------------------------------------------------------


def test_reasons_merge_rules_then_layers_by_contribution_and_only_explain_flagged_rows() -> None:
    lists = InMemoryListStore({"card_denylisted": ["card_bad"]})
    rig = make_rig(lists=lists)
    batch = scoring_batch()
    decisions = rig.engine.decide(batch, NOW)
    flagged = sum(d.decision != "approve" for d in decisions)
    assert rig.layers["trees"].explained_rows and sum(rig.layers["trees"].explained_rows) <= flagged
    for d in decisions:
        codes = [r.code for r in d.reasons]
        assert len(codes) == len(set(codes)) <= 5
        if d.decision == "approve":
            assert not any(code.startswith("TREES_") for code in codes)
    risky = rig.engine.decide(_one_card_batch("card_bad", RISKY), NOW)[0]
    codes = [r.code for r in risky.reasons]
    assert codes[0] == "DENY"
    assert {"TREES_amount_to_card_mean_30d", "GNN_LINKED_FRAUD"} <= set(codes)
    assert risky.reasons[0].layer == "rules"


def test_reasons_are_capped_by_settings() -> None:
    rig = make_rig(reasons=ReasonSettings(max_reasons=1))
    risky = rig.engine.decide(_one_card_batch("card_plain", RISKY | {"is_night": 1.0}), NOW)[0]
    assert len(risky.reasons) == 1


def test_an_edited_rule_file_changes_decisions_without_restart(tmp_path: Any) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULES_TEXT)
    clock = FakeClock()
    book = RuleBook(path, features=CONTRACT_FEATURES, reload_interval_s=1.0, clock=clock)
    engine = ScoringEngine(
        meta=meta_model(),
        layers=make_layers(clock),
        rules=RulesScorer(book),
        scoring=SCORING,
        breaker=BREAKER,
        clock=clock,
    )
    batch = _one_card_batch("card_plain", {})
    before = engine.decide(batch, NOW)[0]
    assert before.decision == "approve"
    path.write_text(RULES_TEXT + rule_toml("all_cards", "card_id LIKE 'card_%'", "decline"))
    for _ in range(2):  # a change is used once it reads the same twice
        clock.advance(1.5)
        after = engine.decide(batch, NOW)[0]
    assert (after.decision, after.reasons[0].code) == ("decline", "ALL_CARDS")
    assert after.model_version != before.model_version


def test_rules_apply_even_when_the_meta_model_does_not_stack_their_flags() -> None:
    world = synthetic_world(3000, seed=33)
    batch = batch_from_world(world)
    layers = make_layers()
    meta = MetaModel.fit({n: layer.score(batch) for n, layer in layers.items()}, world.labels)
    lists = InMemoryListStore({"card_denylisted": ["card_bad"]})
    engine = ScoringEngine(
        meta=meta, layers=layers, rules=make_rules(lists), scoring=SCORING, breaker=BREAKER
    )
    assert engine.decide(_one_card_batch("card_bad", {}), NOW)[0].decision == "decline"
    with pytest.raises(ValueError, match="pass the rule layer"):
        ScoringEngine(
            meta=meta_model(), layers=layers, rules=None, scoring=SCORING, breaker=BREAKER
        )
