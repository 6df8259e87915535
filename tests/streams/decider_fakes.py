"""Builds for the decider's child process in tests (``streams.decider_child.Build``):
module-level, so that a spawned child imports them by name. The fake decider answers
at once and can be told, by transaction id, to crash its process or stall it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import msgspec

from features.definitions import DEFINITIONS_HASH
from fraudstream.errors import FeatureStoreTimeout, NoChampionError
from fraudstream.settings import Settings
from fraudstream.wire import Decision, LabelEvent, Transaction
from models.breaker import BreakerState
from models.decide import LayerReport
from models.decisions import default_decisions
from streams.decider_child import HookEvents
from streams.scoring import Outgoing
from training.bundle import EngineInfo

FAKE_VERSION = "v7:fake-engine"
CRASH = "crash-the-child"  # a transaction id: the child's process exits
STALL = "stall-the-child"  # a transaction id: the child's loop blocks for an hour


class LabelCounter:
    """The GNN's part the child uses, counting the labels it is shown."""

    def __init__(self) -> None:
        self.labels = 0

    def observe_labels(self, labels: Sequence[LabelEvent]) -> None:
        self.labels += len(labels)

    def warm_up(self) -> bool:
        return True

    def refresh_due(self) -> int:
        return 0

    def close(self) -> None:
        return None


class FakeDecider:
    """Approves every transaction with score = labels seen / 1000, reports one of each
    hook, and puts one shadow decision per batch."""

    def __init__(self, settings: Settings, hooks: HookEvents, gnn: LabelCounter) -> None:
        self.models = SimpleNamespace(champion=SimpleNamespace(model_version=FAKE_VERSION))
        self._settings = settings
        self._hooks = hooks
        self._gnn = gnn

    async def decide(
        self, transactions: Sequence[Transaction], now: datetime, *, budget_s: float | None = None
    ) -> list[Decision]:
        ids = {t.transaction_id for t in transactions}
        if CRASH in ids:
            os._exit(3)
        if STALL in ids:
            time.sleep(3600)  # blocks the child's loop: it answers nothing
        self._hooks.layer_result(
            LayerReport("rules", "ok", 1.5, BreakerState.CLOSED, len(transactions))
        )
        self._hooks.breaker_changed("xgboost", BreakerState.CLOSED, BreakerState.OPEN)
        self._hooks.feature_store_error(FeatureStoreTimeout(50.0))
        defaults = default_decisions(
            transactions, self._settings.scoring, now, model_version=FAKE_VERSION
        )
        score = self._gnn.labels / 1000.0
        return [
            msgspec.structs.replace(
                d, score=score, timeout_default=False, degraded=False, layers_run=["rules"]
            )
            for d in defaults
        ]

    def take_shadow(self) -> list[Outgoing]:
        return [Outgoing(b"shadow-key", b"shadow-value")]


@dataclass
class FakeParts:
    decider: Any
    gnn: Any
    info: EngineInfo
    source: str = "fake bundle"
    watcher: Any = None


def fake_info() -> EngineInfo:
    return EngineInfo("fake-engine", DEFINITIONS_HASH, (), {}, {}, {})


def build_fake(settings: Settings, hooks: HookEvents) -> FakeParts:
    gnn = LabelCounter()
    return FakeParts(FakeDecider(settings, hooks, gnn), gnn, fake_info())


def build_without_champion(settings: Settings, hooks: HookEvents) -> FakeParts:
    raise NoChampionError("fraud-engine", "sqlite:///nowhere.db")
