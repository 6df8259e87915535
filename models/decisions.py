"""Building the decision records: the engine's, and the configured defaults emitted
when the deadline passes or the engine fails (by the engine, the worker's decider, or
the worker itself when its decider child is late or gone)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fraudstream.settings import ScoringSettings
from fraudstream.wire.schemas import SCHEMA_VERSION, Decision, Outcome, Reason, Transaction

TIMEOUT_REASON = Reason(
    code="TIMEOUT_DEFAULT",
    text="decision deadline passed; configured default applied",
    layer="engine",
)
ENGINE_ERROR_REASON = Reason(
    code="ENGINE_ERROR", text="scoring failed; configured default applied", layer="engine"
)


def default_decisions(
    transactions: Sequence[Transaction],
    settings: ScoringSettings,
    now: datetime,
    *,
    reason: Reason = TIMEOUT_REASON,
    timeout_default: bool = True,
    model_version: str = "default",
    layers_run: Sequence[str] = (),
) -> list[Decision]:
    """The configured default action for every transaction (fail-open ``approve`` or
    fail-closed ``review``/``decline``), flagged degraded and, for the deadline path,
    ``timeout_default``. The score is nominal: 0 for approve, else the threshold of the
    action, so a consumer thresholding on score agrees with the decision."""
    action: Outcome = settings.default_action
    score = {"approve": 0.0, "review": settings.review_threshold}.get(
        action, settings.decline_threshold
    )
    return [
        decision_record(
            t,
            action,
            score,
            [reason],
            model_version,
            layers_run=layers_run,
            degraded=True,
            decided_at=now,
            timeout_default=timeout_default,
        )
        for t in transactions
    ]


def engine_error_decisions(
    transactions: Sequence[Transaction],
    settings: ScoringSettings,
    now: datetime,
    *,
    model_version: str,
) -> list[Decision]:
    """The configured default for a batch the engine failed on (a bug, a dead decider
    process): degraded, reason ``engine_error``, not a deadline default."""
    return default_decisions(
        transactions,
        settings,
        now,
        reason=ENGINE_ERROR_REASON,
        timeout_default=False,
        model_version=model_version,
    )


def fallback_decisions(
    transactions: Sequence[Transaction],
    settings: ScoringSettings,
    now: datetime,
    *,
    timed_out: bool,
    model_version: str,
) -> list[Decision]:
    """The deadline's defaults (``timed_out``), else the engine-error defaults: what a
    decider emits for a batch it could not decide."""
    if timed_out:
        return default_decisions(transactions, settings, now, model_version=model_version)
    return engine_error_decisions(transactions, settings, now, model_version=model_version)


def decision_record(
    tx: Transaction,
    outcome: str,
    score: float,
    reasons: list[Reason],
    model_version: str,
    *,
    layers_run: Sequence[str],
    degraded: bool,
    decided_at: datetime,
    timeout_default: bool = False,
) -> Decision:
    return Decision(
        schema_version=SCHEMA_VERSION,
        transaction_id=tx.transaction_id,
        card_id=tx.card_id,
        decision=outcome,  # type: ignore[arg-type]
        score=score,
        reasons=reasons,
        model_version=model_version,
        layers_run=list(layers_run),
        degraded=degraded,
        latency_ms=max(0.0, (decided_at - tx.event_time).total_seconds() * 1000.0),
        event_time=tx.event_time,
        decided_at=decided_at,
        amount=tx.amount,
        currency=tx.currency,
        timeout_default=timeout_default,
    )
