"""The worker's wiring, without a broker: the trained bundle, the store, the fallbacks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from features.matrix import FeatureMatrix
from features.table import transaction_only
from fraudstream.errors import EngineBundleMissing, FeatureStoreTimeout
from fraudstream.metrics import EngineMetrics, PrometheusEngineHooks, PrometheusStreamHooks
from fraudstream.wire import Transaction
from models.decide import EnginePipeline
from streams.demo import FRAUDSTREAM_COMMAND
from streams.scoring import NoHooks
from streams.worker import build_scoring, build_worker_app
from tests.streams.harness import REPO
from tests.training.factories import engine_settings, last_day_batch
from training.engine import load_engine

ALL_LAYERS = ["gnn", "iforest", "rules", "xgboost"]
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once


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
