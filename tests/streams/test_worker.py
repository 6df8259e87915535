"""The worker's wiring, without a broker: the trained bundle, the store, the fallbacks."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from features.definitions import DEFINITIONS_HASH
from features.matrix import FeatureMatrix
from features.table import transaction_only
from fraudstream.errors import (
    EngineBundleMissing,
    FeatureStoreTimeout,
    NoChampionError,
    RolloutFileError,
    VersionDefinitionsMismatch,
)
from fraudstream.metrics import EngineMetrics, PrometheusEngineHooks, PrometheusStreamHooks
from fraudstream.wire import Transaction
from models.decide import EnginePipeline
from streams import scoring_loop
from streams.batching import EventBatcher
from streams.demo import FRAUDSTREAM_COMMAND
from streams.scoring import NoHooks
from streams.worker import build_scoring, build_worker_app, freeze_startup_objects
from tests.streams.harness import REPO
from tests.training.factories import engine_settings, last_day_batch
from training.engine import load_engine
from training.registry import CHALLENGER, InMemoryRegistry

ALL_LAYERS = ["gnn", "iforest", "rules", "xgboost"]
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once
METRICS = {"average_precision": 0.5, "card_precision_at_100": 0.2, "auc_roc": 0.8}


class FakeStore:
    """Answers with the offline features of a known batch, or raises like a slow Redis."""

    def __init__(self, features: FeatureMatrix, fail: bool = False) -> None:
        self.features = features
        self.fail = fail
        self.calls = 0

    def compute(self, transactions: Sequence[Transaction]) -> FeatureMatrix:
        self.calls += 1
        if self.fail:
            raise FeatureStoreTimeout(50.0)
        return self.features


class RecordingFallback:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, transactions: Sequence[Transaction]) -> FeatureMatrix:
        self.calls += 1
        return transaction_only(transactions)


def test_with_the_store_answering_every_layer_runs_undegraded(engine_bundle: Path) -> None:
    batch = last_day_batch(50)
    engine = load_engine(engine_bundle, engine_settings(engine_bundle))
    fallback = RecordingFallback()
    pipeline = EnginePipeline(engine, FakeStore(batch.features).compute, fallback)
    decisions = pipeline.decide(batch.transactions, batch.transactions[-1].event_time)
    assert all(sorted(d.layers_run) == ALL_LAYERS and not d.degraded for d in decisions)
    assert fallback.calls == 0


def test_a_store_timeout_degrades_to_transaction_only_features(engine_bundle: Path) -> None:
    batch = last_day_batch(50)
    engine = load_engine(engine_bundle, engine_settings(engine_bundle))
    fallback, errors = RecordingFallback(), []
    store = FakeStore(batch.features, fail=True)
    pipeline = EnginePipeline(engine, store.compute, fallback, on_feature_store_error=errors.append)
    decisions = pipeline.decide(batch.transactions, batch.transactions[-1].event_time)
    assert len(decisions) == len(batch)
    # Every layer still ran (on the features that need no store), and says it is degraded.
    assert all(sorted(d.layers_run) == ALL_LAYERS and d.degraded for d in decisions)
    assert (store.calls, fallback.calls) == (1, 1)
    assert [type(e) for e in errors] == [FeatureStoreTimeout]


async def test_the_worker_scores_degraded_when_redis_is_unreachable(engine_bundle: Path) -> None:
    settings = engine_settings(engine_bundle, FRAUDSTREAM__REDIS__URL=NOWHERE)
    metrics = EngineMetrics(CollectorRegistry())
    parts = build_scoring(settings, PrometheusStreamHooks(metrics), PrometheusEngineHooks(metrics))
    batch = last_day_batch(20)
    decisions = await parts.decider.decide(batch.transactions, batch.transactions[-1].event_time)
    assert len(decisions) == 20
    assert all(sorted(d.layers_run) == ALL_LAYERS and d.degraded for d in decisions)
    assert not any(d.timeout_default for d in decisions)
    assert parts.info.version in decisions[0].model_version
    sample = metrics.registry.get_sample_value
    assert sample("fraudstream_feature_store_errors_total", {"error": "FeatureStoreUnavailable"})
    assert sample("fraudstream_layer_results_total", {"layer": "xgboost", "status": "ok"}) == 1


def test_the_worker_app_has_a_scoring_and_a_labels_agent(engine_bundle: Path) -> None:
    settings = engine_settings(engine_bundle, FRAUDSTREAM__REDIS__URL=NOWHERE)
    metrics = EngineMetrics(CollectorRegistry())
    parts = build_scoring(settings, NoHooks())
    app = build_worker_app(settings, metrics, parts)
    assert {a.name.rsplit(".", 1)[-1] for a in app.agents.values()} >= {"score", "labels"}


class WindowRecordingStream:
    """Stands in for the agents' Faust stream: records the window each agent batches
    with (``take_events``; the scoring agent's own batcher, see below) and ends at once."""

    def __init__(self) -> None:
        self.windows: list[float] = []

    def take_events(self, max_: int, within: float) -> AsyncIterator[list[Any]]:
        self.windows.append(within)
        return self._nothing()

    def noack(self) -> WindowRecordingStream:
        return self

    def events(self) -> AsyncIterator[Any]:
        return self._nothing()

    async def _nothing(self) -> AsyncIterator[Any]:
        nothing: list[Any] = []
        for item in nothing:
            yield item


async def test_labels_and_reconciliation_batch_with_the_background_window(
    engine_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = engine_settings(
        engine_bundle,
        FRAUDSTREAM__REDIS__URL=NOWHERE,
        FRAUDSTREAM__SCORING__BATCH_WINDOW_MS="7",
        FRAUDSTREAM__WORKER__BACKGROUND_BATCH_WINDOW_MS="400",
    )
    parts = build_scoring(settings, NoHooks())
    app = build_worker_app(settings, EngineMetrics(CollectorRegistry()), parts)
    windows: dict[str, list[float]] = {}
    current: list[float] = []

    class RecordingBatcher(EventBatcher[Any]):
        def __init__(self, events: Any, max_batch: int, within_s: float) -> None:
            current.append(within_s)
            super().__init__(events, max_batch, within_s)

    monkeypatch.setattr(scoring_loop, "EventBatcher", RecordingBatcher)
    for agent in app.agents.values():
        stream = WindowRecordingStream()
        current.clear()
        await agent.fun(stream)
        windows[agent.name.rsplit(".", 1)[-1]] = stream.windows + current
    assert windows == {"score": [0.007], "labels": [0.4], "reconcile": [0.4]}


def test_without_a_bundle_the_worker_is_not_built(tmp_path: Path) -> None:
    with pytest.raises(EngineBundleMissing) as info:
        build_scoring(engine_settings(tmp_path / "none"), NoHooks())
    assert info.value.path == tmp_path / "none"


def test_without_a_bundle_the_worker_command_says_how_to_make_one(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FRAUDSTREAM__MODELS__BUNDLE_DIR": str(tmp_path / "none"),
        "FRAUDSTREAM__WORKER__DATA_DIR": str(tmp_path / "faust"),
    }
    done = subprocess.run(
        [*FRAUDSTREAM_COMMAND, "worker"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert f"no trained engine at {tmp_path / 'none'}" in said
    assert "fraudstream demo" in said and "fraudstream train" in said


def registry_settings(bundle: Path, tmp_path: Path, rollout: str = "") -> Any:
    """Unit settings for ``models.source = "registry"`` (Redis unreachable)."""
    (tmp_path / "rollout.toml").write_text(rollout, encoding="utf-8")
    return engine_settings(
        bundle,
        FRAUDSTREAM__REDIS__URL=NOWHERE,
        FRAUDSTREAM__MODELS__SOURCE="registry",
        FRAUDSTREAM__MODELS__DOWNLOAD_DIR=str(tmp_path / "downloads"),
        FRAUDSTREAM__MODELS__ROLLOUT_FILE=str(tmp_path / "rollout.toml"),
    )


def registry_with(bundle: Path, *aliases: str, definitions: str = DEFINITIONS_HASH) -> Any:
    registry = InMemoryRegistry()
    for alias in aliases:
        version = registry.register(bundle, METRICS, {}, definitions)
        registry.promote(version, alias, actor="test", reason="test", force=True)
    return registry


async def test_the_worker_scores_with_the_registry_champion(
    engine_bundle: Path, tmp_path: Path
) -> None:
    settings = registry_settings(tmp_path / "not-used", tmp_path)
    parts = build_scoring(settings, NoHooks(), registry=registry_with(engine_bundle, "champion"))
    batch = last_day_batch(10)
    decisions = await parts.decider.decide(batch.transactions, batch.transactions[-1].event_time)
    assert {d.model_version.split(":", 1)[0] for d in decisions} == {"v1"}
    assert parts.info.version in decisions[0].model_version
    assert parts.watcher is not None and parts.source == "fraudstream-engine/1"
    assert parts.decider.take_shadow() == []
    assert list((tmp_path / "downloads").iterdir()) == []  # loaded, then cleaned up


async def test_a_registry_challenger_shadows_and_takes_its_canary(
    engine_bundle: Path, tmp_path: Path
) -> None:
    settings = registry_settings(engine_bundle, tmp_path, "canary_share = 0.5\nshadow = true\n")
    registry = registry_with(engine_bundle, "champion", CHALLENGER)
    parts = build_scoring(settings, NoHooks(), registry=registry)
    batch = last_day_batch(40)
    live = await parts.decider.decide(batch.transactions, batch.transactions[-1].event_time)
    shadow = parts.decider.take_shadow()
    assert len(shadow) == len(live) == 40
    by_model = {d.model_version.split(":", 1)[0] for d in live}
    assert by_model == {"v1", "v2"}  # half the ids in the canary: both decide live


def test_a_champion_on_other_feature_definitions_stops_start_up(
    engine_bundle: Path, tmp_path: Path
) -> None:
    registry = registry_with(engine_bundle, "champion", definitions="0ld-defs")
    with pytest.raises(VersionDefinitionsMismatch) as info:
        build_scoring(registry_settings(engine_bundle, tmp_path), NoHooks(), registry=registry)
    assert (info.value.expected, info.value.found, info.value.version) == (
        DEFINITIONS_HASH,
        "0ld-defs",
        1,
    )
    assert DEFINITIONS_HASH in str(info.value) and "0ld-defs" in str(info.value)


def test_a_registry_without_a_champion_stops_start_up(engine_bundle: Path, tmp_path: Path) -> None:
    registry = registry_with(engine_bundle, CHALLENGER)
    with pytest.raises(NoChampionError, match="has no champion"):
        build_scoring(registry_settings(engine_bundle, tmp_path), NoHooks(), registry=registry)


def test_a_bad_rollout_file_stops_start_up_naming_file_line_and_field(
    engine_bundle: Path, tmp_path: Path
) -> None:
    settings = registry_settings(engine_bundle, tmp_path, "canary_share = 0.1\nshadow = 2\n")
    with pytest.raises(RolloutFileError) as info:
        build_scoring(settings, NoHooks(), registry=registry_with(engine_bundle, "champion"))
    assert (info.value.source, info.value.line, info.value.key) == (
        str(tmp_path / "rollout.toml"),
        2,
        "shadow",
    )


def test_startup_objects_are_kept_out_of_full_collections() -> None:
    """A full collection must not walk the libraries and the engine (see the helper)."""
    before = len(gc.get_objects())
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 10_000
        assert len(gc.get_objects()) < before - 10_000  # a collection no longer sees them
    finally:
        gc.unfreeze()
