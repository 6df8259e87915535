"""The pure decision function: a decoded batch plus its features in, decisions out.

``streams/`` calls :meth:`ScoringEngine.decide` with a batch from :class:`BatchFeatures`
(the online store's features, else transaction-only ones when the store is down).
Nothing here does I/O of its own beyond what its layers do, reads a wall clock (``now``
is passed in; elapsed time comes from an injectable monotonic clock) or emits metrics:
``on_layer_result`` and ``on_breaker_change`` hand the lead what to export.

Per batch: the rule layer, then every learned layer, each behind its own circuit
breaker; the meta-ensemble stacks what ran (its fallback stacker for whatever did not);
fired rule adjustments are added; thresholds (the fallback ones when the batch is
degraded) and the rule precedence (``models/rules/evaluate.py``) give the outcome;
reasons are merged across layers. A batch is **degraded** when a layer was skipped or
failed, the feature store was down, the allow/deny lists could not be read, or a rule
failed to evaluate; every decision lists the layers that ran.

Deadline: a CPU-bound layer cannot be interrupted from inside its thread, so the
caller runs ``decide`` in a worker thread under ``asyncio.wait_for`` and, when that
times out, emits :func:`models.decisions.default_decisions` itself. Inside, ``decide`` checks the
:class:`Deadline` before each layer and at the end, and returns the timeout defaults
rather than a late decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from features.matrix import FeatureMatrix
from fraudstream.errors import CircuitOpenError, FeatureStoreError, LayerError
from fraudstream.settings import BreakerSettings, ScoringSettings
from fraudstream.wire.schemas import Decision, Transaction
from models.base import Scorer, Scores, ScoringBatch
from models.breaker import BreakerState, CircuitBreaker, StateListener, validate_scores
from models.decisions import decision_record, default_decisions, engine_error_decisions
from models.ensemble import EnsembleScorer, MetaModel
from models.reasons import ReasonSettings, layer_explanations, merge_reasons
from models.rules import RuleEvaluation, RuleSet, RulesScorer

T = TypeVar("T")
Clock = Callable[[], float]
LayerStatus = Literal["ok", "slow", "error", "skipped", "deadline"]


@dataclass(frozen=True)
class LayerReport:
    """One layer's part in one batch, for metrics and logs."""

    layer: str
    status: LayerStatus
    elapsed_ms: float
    breaker_state: BreakerState
    rows: int
    error: str | None = None


@dataclass(frozen=True)
class Deadline:
    """The moment (on ``clock``) after which no decision may be emitted as computed."""

    expires_at: float
    clock: Clock = time.monotonic

    @classmethod
    def after_ms(cls, ms: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + ms / 1000.0, clock)

    def expired(self) -> bool:
        return self.clock() >= self.expires_at

    def remaining_ms(self) -> float:
        return max(0.0, (self.expires_at - self.clock()) * 1000.0)


class ScoringEngine:
    """Rules + learned layers behind breakers + meta-ensemble -> decisions."""

    def __init__(
        self,
        *,
        meta: MetaModel,
        layers: Mapping[str, Scorer],
        rules: RulesScorer | None,
        scoring: ScoringSettings,
        breaker: BreakerSettings,
        reasons: ReasonSettings | None = None,
        latency_budgets_ms: Mapping[str, float] | None = None,
        clock: Clock = time.monotonic,
        on_layer_result: Callable[[LayerReport], None] | None = None,
        on_breaker_change: StateListener | None = None,
        on_engine_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if set(layers) != set(meta.layers):
            raise ValueError(f"meta model combines {list(meta.layers)}, given {sorted(layers)}")
        if meta.uses_rules and rules is None:
            raise ValueError("the meta model stacks rule flags: pass the rule layer")
        self.meta = meta
        self.layers = dict(layers)
        # Without rule flags in the meta model, rules still decline, allow, review, adjust.
        self.rules = rules
        self.scoring = scoring
        self.reasons = reasons or ReasonSettings()
        self._clock = clock
        self._on_layer_result = on_layer_result
        self._on_engine_error = on_engine_error
        # The settings' per-layer budgets, then the caller's; the rest: latency_budget_ms.
        budgets = {str(name): ms for name, ms in breaker.layer_latency_budget_ms.items()}
        budgets.update(latency_budgets_ms or {})
        names = [*(["rules"] if self.rules is not None else []), *self.layers]
        self.breakers = {
            name: CircuitBreaker(
                name,
                breaker,
                latency_budget_ms=budgets.get(name),
                clock=clock,
                on_state_change=on_breaker_change,
            )
            for name in names
        }

    @classmethod
    def from_ensemble(
        cls,
        ensemble: EnsembleScorer,
        *,
        scoring: ScoringSettings,
        breaker: BreakerSettings,
        rules: RulesScorer | None = None,
        **options: Any,
    ) -> ScoringEngine:
        """The engine for a loaded ensemble; ``rules`` replaces the saved rules (pass the
        hot-reloaded, list-backed rule layer here); ``options`` as for the constructor."""
        return cls(
            meta=ensemble.meta,
            layers=ensemble.layers,
            rules=rules if rules is not None else ensemble.rules,
            scoring=scoring,
            breaker=breaker,
            **options,
        )

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def model_version(self) -> str:
        return self._version(self.rules.rules if self.rules is not None else None)

    def _version(self, rules: RuleSet | None) -> str:
        """Meta model and rule file: with hot reload, the rules are part of the model."""
        return (self.meta.version + (f"+{rules.version}" if rules is not None else ""))[:128]

    def decide(
        self, batch: ScoringBatch, now: datetime, deadline: Deadline | None = None
    ) -> list[Decision]:
        """One decision per transaction of ``batch``, in order; never raises."""
        start = self._clock()
        deadline = deadline or Deadline.after_ms(self.scoring.deadline_ms, self._clock)
        try:
            return self._decide(batch, now, deadline, start)
        except Exception as exc:  # a bug must not stop the stream: fail to the configured default
            if self._on_engine_error is not None:
                self._on_engine_error(exc)
            return engine_error_decisions(
                batch.transactions, self.scoring, now, model_version=self.model_version
            )

    # --- the steps --------------------------------------------------------------------

    def _decide(
        self, batch: ScoringBatch, now: datetime, deadline: Deadline, start: float
    ) -> list[Decision]:
        rows = len(batch)
        ran: list[str] = []
        evaluation: RuleEvaluation | None = None
        if self.rules is not None:
            rules = self.rules
            evaluation = self._run(
                "rules", deadline, rows, lambda: rules.evaluate(batch), _rows_check(rows)
            )
            if evaluation is not None:
                ran.append("rules")
        layer_scores: dict[str, Scores] = {}
        for name, layer in self.layers.items():
            scores = self._run_layer(name, layer, batch, deadline)
            if scores is not None:
                layer_scores[name] = scores
                ran.append(name)
        if deadline.expired():
            return self._timeout(batch.transactions, now, ran)

        flags = evaluation.flags() if evaluation is not None else None
        stacked = self.meta.stack(layer_scores, flags, rows)
        adjustment = evaluation.adjustment if evaluation is not None else np.zeros(rows)
        probability = np.clip(stacked.scores + adjustment, 0.0, 1.0)
        degraded = (
            batch.features_degraded
            or len(ran) < len(self.breakers)
            or (evaluation is not None and (not evaluation.lists_ok or bool(evaluation.errors)))
        )
        outcomes = self._outcomes(probability, evaluation, degraded)

        needs_reasons = np.flatnonzero(outcomes != "approve").astype(np.int64)
        explanations = layer_explanations(
            batch,
            needs_reasons,
            layers=self.layers,
            layer_scores=layer_scores,
            stacked=stacked,
            top=self.reasons.explain_top,
            on_error=self._explain_failed,
        )
        reasons = [
            merge_reasons(
                i,
                rules=evaluation,
                stacked=stacked,
                layer_scores=layer_scores,
                explanations=explanations,
                settings=self.reasons,
            )
            for i in range(rows)
        ]
        # Last check: past this point only cheap struct building remains.
        if deadline.expired():
            return self._timeout(batch.transactions, now, ran)
        version = self._version(evaluation.ruleset if evaluation is not None else None)
        decided_at = now + timedelta(seconds=self._clock() - start)
        return [
            decision_record(
                tx,
                str(outcomes[i]),
                float(probability[i]),
                reasons[i],
                version,
                layers_run=ran,
                degraded=degraded,
                decided_at=decided_at,
            )
            for i, tx in enumerate(batch.transactions)
        ]

    def _run_layer(
        self, name: str, layer: Scorer, batch: ScoringBatch, deadline: Deadline
    ) -> Scores | None:
        def check(scores: Scores) -> None:
            validate_scores(name, scores, len(batch))

        return self._run(name, deadline, len(batch), lambda: layer.score(batch), check)

    def _run(
        self,
        name: str,
        deadline: Deadline,
        rows: int,
        fn: Callable[[], T],
        check: Callable[[T], None],
    ) -> T | None:
        breaker = self.breakers[name]
        if deadline.expired():
            self._report(name, "deadline", 0.0, rows)
            return None
        try:
            result = breaker.call(fn, check)
        except CircuitOpenError:
            self._report(name, "skipped", 0.0, rows)
            return None
        except LayerError as exc:
            self._report(name, "error", 0.0, rows, exc.reason)
            return None
        self._report(name, "slow" if result.overran else "ok", result.elapsed_ms, rows)
        return result.value

    def _outcomes(
        self, probability: Scores, evaluation: RuleEvaluation | None, degraded: bool
    ) -> npt.NDArray[np.str_]:
        s = self.scoring
        review, decline = (
            (s.fallback_review_threshold, s.fallback_decline_threshold)
            if degraded
            else (s.review_threshold, s.decline_threshold)
        )
        outcomes = np.where(
            probability >= decline, "decline", np.where(probability >= review, "review", "approve")
        )
        if evaluation is not None:
            outcomes = np.where((outcomes == "approve") & evaluation.review, "review", outcomes)
            outcomes = np.where(evaluation.allow, "approve", outcomes)
            outcomes = np.where(evaluation.decline, "decline", outcomes)
        return outcomes.astype(np.str_)

    def _timeout(
        self, transactions: Sequence[Transaction], now: datetime, ran: list[str]
    ) -> list[Decision]:
        return default_decisions(
            transactions, self.scoring, now, model_version=self.model_version, layers_run=ran
        )

    def _report(
        self, name: str, status: LayerStatus, elapsed_ms: float, rows: int, error: str | None = None
    ) -> None:
        if self._on_layer_result is not None:
            state = self.breakers[name].state
            self._on_layer_result(LayerReport(name, status, elapsed_ms, state, rows, error))

    def _explain_failed(self, name: str, exc: BaseException) -> None:
        if self._on_layer_result is not None:
            state = self.breakers[name].state
            self._on_layer_result(LayerReport(f"{name}.explain", "error", 0.0, state, 0, repr(exc)))


def decide(
    batch: ScoringBatch, engine: ScoringEngine, now: datetime, deadline: Deadline | None = None
) -> list[Decision]:
    """Functional spelling of :meth:`ScoringEngine.decide`."""
    return engine.decide(batch, now, deadline)


def _rows_check(rows: int) -> Callable[[RuleEvaluation], None]:
    def check(evaluation: RuleEvaluation) -> None:
        if len(evaluation) != rows:
            raise LayerError("rules", f"returned {len(evaluation)} rows for {rows}")

    return check


class BatchFeatures:
    """Features of a batch, fetched once (for the champion and any challenger): the
    online store's, else the transaction-only features, flagged degraded.

    ``compute`` is the online store's batch lookup (raises ``FeatureStoreError`` when
    down or slow); ``transaction_features`` computes what needs no store."""

    def __init__(
        self,
        compute: Callable[[Sequence[Transaction]], FeatureMatrix],
        transaction_features: Callable[[Sequence[Transaction]], FeatureMatrix],
        on_error: Callable[[FeatureStoreError], None] | None = None,
    ) -> None:
        self._compute = compute
        self._fallback = transaction_features
        self._on_error = on_error

    def __call__(self, transactions: Sequence[Transaction]) -> ScoringBatch:
        try:
            return ScoringBatch(transactions, self._compute(transactions))
        except FeatureStoreError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            return ScoringBatch(transactions, self._fallback(transactions), True)


class EnginePipeline:
    """``streams.scoring.DecisionPipeline`` over one engine: :class:`BatchFeatures`,
    then the engine's decisions (the worker's ``streams.routing.RoutedDecider`` does the
    same for a champion and a challenger)."""

    def __init__(
        self,
        engine: ScoringEngine,
        features: Callable[[Sequence[Transaction]], FeatureMatrix],
        transaction_features: Callable[[Sequence[Transaction]], FeatureMatrix],
        *,
        on_feature_store_error: Callable[[FeatureStoreError], None] | None = None,
    ) -> None:
        self.engine = engine
        self._batch = BatchFeatures(features, transaction_features, on_feature_store_error)

    def decide(
        self, transactions: Sequence[Transaction], now: datetime, deadline: Deadline | None = None
    ) -> list[Decision]:
        clock = self.engine.clock
        started = clock()
        deadline = deadline or Deadline.after_ms(self.engine.scoring.deadline_ms, clock)
        batch = self._batch(transactions)
        # The feature lookup is part of deciding: a decision's decided_at and latency_ms
        # count it (the engine adds its own scoring time to the ``now`` it is given).
        now += timedelta(seconds=clock() - started)
        return self.engine.decide(batch, now, deadline)
