"""Fake engines, transactions and recorded hooks for the rollout tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np

from features.matrix import FeatureMatrix
from fraudstream.settings import ScoringSettings
from fraudstream.wire import Decision, Transaction
from fraudstream.wire.schemas import SCHEMA_VERSION
from models.base import ScoringBatch
from models.decide import Deadline
from streams.hotswap import LiveModel, ModelSet, Swap
from streams.rollout import FixedRollout, RolloutPlan
from streams.routing import RoutedDecider

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def make_transactions(n: int, start: int = 0) -> list[Transaction]:
    return [
        Transaction(
            schema_version=SCHEMA_VERSION,
            transaction_id=f"tx-{i:07d}",
            event_time=T0 + timedelta(seconds=i),
            card_id=f"card-{i % 7}",
            terminal_id=f"term-{i % 3}",
            amount=10.0 + i,
            currency="EUR",
        )
        for i in range(start, start + n)
    ]


def fake_features(transactions: Sequence[Transaction]) -> ScoringBatch:
    return ScoringBatch(transactions, FeatureMatrix(("x",), np.zeros((len(transactions), 1))))


class FakeEngine:
    """Decides everything with one score; can fail, time out, or wait for ``gate``."""

    def __init__(
        self,
        name: str,
        score: float = 0.1,
        *,
        fail: bool = False,
        timeout_default: bool = False,
        gate: threading.Event | None = None,
    ) -> None:
        self.model_version = name
        self.score = score
        self.fail = fail
        self.timeout_default = timeout_default
        self.gate = gate
        self.entered = threading.Event()
        self.seen: list[str] = []

    def decide(
        self, batch: ScoringBatch, now: datetime, deadline: Deadline | None = None
    ) -> list[Decision]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail:
            raise RuntimeError(f"{self.model_version} is broken")
        self.seen.extend(t.transaction_id for t in batch.transactions)
        return [
            Decision(
                schema_version=SCHEMA_VERSION,
                transaction_id=t.transaction_id,
                card_id=t.card_id,
                decision="approve",
                score=self.score,
                reasons=[],
                model_version=self.model_version,
                layers_run=[] if self.timeout_default else ["fake"],
                degraded=False,
                latency_ms=0.0,
                event_time=t.event_time,
                decided_at=now,
                amount=t.amount,
                currency=t.currency,
                timeout_default=self.timeout_default,
            )
            for t in batch.transactions
        ]


class Reports:
    """Every hook of the rollout, recorded."""

    def __init__(self) -> None:
        self.failed: list[tuple[str, BaseException | None]] = []
        self.swaps: list[Swap] = []
        self.staged: list[tuple[str, int | None]] = []
        self.refused: list[tuple[str, int, BaseException]] = []
        self.poll_errors: list[BaseException] = []
        self.routed: list[tuple[int, int, int]] = []

    def batch_routed(self, champion: int, canary: int, shadow: int) -> None:
        self.routed.append((champion, canary, shadow))

    def challenger_failed(self, reason: str, error: BaseException | None) -> None:
        self.failed.append((reason, error))

    def models_swapped(self, swaps: Sequence[Swap]) -> None:
        self.swaps.extend(swaps)

    def model_staged(self, alias: str, version: int | None, source: str) -> None:
        self.staged.append((alias, version))

    def model_refused(self, alias: str, version: int, error: BaseException) -> None:
        self.refused.append((alias, version, error))

    def poll_failed(self, error: BaseException) -> None:
        self.poll_errors.append(error)


def make_decider(
    champion: FakeEngine | LiveModel,
    challenger: FakeEngine | LiveModel | None = None,
    plan: RolloutPlan | None = None,
    *,
    timeout_s: float = 30.0,
    reports: Reports | None = None,
    features: Callable[[Sequence[Transaction]], ScoringBatch] = fake_features,
    clock: Callable[[], float] = time.monotonic,
) -> RoutedDecider:
    def live(engine: FakeEngine | LiveModel) -> LiveModel:
        return engine if isinstance(engine, LiveModel) else LiveModel(engine)

    models = ModelSet(live(champion), None if challenger is None else live(challenger))
    return RoutedDecider(
        models,
        features,
        FixedRollout(plan or RolloutPlan()),
        ScoringSettings(),
        timeout_s=timeout_s,
        hooks=reports,
        clock=clock,
    )


def shadow_of(decider: RoutedDecider) -> list[Decision]:
    return [msgspec.json.decode(out.value, type=Decision) for out in decider.take_shadow()]
