"""The configured defaults: what the deadline and a failed engine emit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from fraudstream.settings import ScoringSettings
from fraudstream.wire.schemas import Decision, Transaction
from models.decisions import (
    ENGINE_ERROR_REASON,
    TIMEOUT_REASON,
    default_decisions,
    engine_error_decisions,
    fallback_decisions,
)

NOW = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)
SCORING = ScoringSettings(review_threshold=0.3, decline_threshold=0.8)


def transactions(count: int) -> list[Transaction]:
    return [
        Transaction(
            schema_version=1,
            transaction_id=f"tx-{i}",
            event_time=NOW - timedelta(milliseconds=40),
            card_id=f"card-{i}",
            terminal_id="terminal-1",
            amount=10.0 + i,
            currency="EUR",
        )
        for i in range(count)
    ]


@pytest.mark.parametrize(("action", "score"), [("approve", 0.0), ("review", 0.3), ("decline", 0.8)])
def test_default_decisions_carry_the_action_and_a_matching_nominal_score(
    action: str, score: float
) -> None:
    scoring = SCORING.model_copy(update={"default_action": action})
    decisions = default_decisions(transactions(3), scoring, NOW)
    assert [(d.decision, d.score, d.timeout_default) for d in decisions] == [
        (action, score, True)
    ] * 3
    assert all(d.degraded and d.reasons == [TIMEOUT_REASON] for d in decisions)
    assert [d.latency_ms for d in decisions] == [pytest.approx(40.0)] * 3
    assert all(msgspec.json.decode(msgspec.json.encode(d), type=Decision) == d for d in decisions)


def test_engine_error_decisions_are_the_default_action_but_not_a_deadline_default() -> None:
    scoring = SCORING.model_copy(update={"default_action": "decline"})
    [decision] = engine_error_decisions(transactions(1), scoring, NOW, model_version="v9")
    assert (decision.decision, decision.score) == ("decline", 0.8)
    assert decision.degraded and not decision.timeout_default
    assert decision.reasons == [ENGINE_ERROR_REASON]
    assert (decision.model_version, decision.layers_run) == ("v9", [])


@pytest.mark.parametrize("timed_out", [True, False])
def test_fallback_decisions_pick_the_deadline_or_the_engine_error_default(timed_out: bool) -> None:
    [decision] = fallback_decisions(
        transactions(1), SCORING, NOW, timed_out=timed_out, model_version="v3"
    )
    assert decision.timeout_default is timed_out
    assert decision.reasons == [TIMEOUT_REASON if timed_out else ENGINE_ERROR_REASON]
    assert decision.model_version == "v3" and decision.degraded
