"""Training a whole engine on a small simulation, saving it as one bundle, loading it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from features.definitions import DEFINITIONS_HASH, FEATURE_NAMES
from fraudstream.errors import (
    ArtifactDigestError,
    DefinitionsMismatchError,
    EngineBundleMissing,
    FeatureHashMismatch,
)
from models.artifacts import MANIFEST_NAME, load_artifacts, read_manifest, save_artifacts
from models.xgb import XGBoostScorer
from tests.training.factories import (
    ENSEMBLE_UNTIL,
    LABEL_DELAY_MS,
    LAYERS_UNTIL,
    engine_settings,
    last_day_batch,
    small_world,
    train_small_engine,
)
from training.engine import ENGINE_FILE, TrainedEngine, load_bundle, load_engine, read_engine_info
from training.split import as_ms

ALL_LAYERS = ["rules", "xgboost", "iforest", "gnn"]


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory: pytest.TempPathFactory) -> TrainedEngine:
    """One small engine per module; tests that change a bundle copy it first."""
    return train_small_engine(tmp_path_factory.mktemp("engine") / "bundle")


def copy_bundle(engine: TrainedEngine, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(engine.bundle_dir, target)
    return target


def rewrite_engine_json(bundle: Path, **changes: Any) -> None:
    """Change engine.json and re-sign the manifest, as a training run on other code
    would have written it (so only the content, not the digest, is wrong)."""
    files = load_artifacts(bundle, "ensemble")
    doc = json.loads(files[ENGINE_FILE])
    doc.update(changes)
    formats = {e.name: e.format for e in read_manifest(bundle, "ensemble").files}
    files[ENGINE_FILE] = (json.dumps(doc, indent=1) + "\n").encode()
    save_artifacts(bundle, "ensemble", {n: (formats[n], data) for n, data in files.items()})


def test_bundle_round_trip_gives_identical_scores(small_engine: TrainedEngine) -> None:
    batch = last_day_batch()
    loaded = load_bundle(small_engine.bundle_dir)
    assert loaded.info == small_engine.info
    assert loaded.ensemble.version == small_engine.version
    np.testing.assert_array_equal(loaded.ensemble.score(batch), small_engine.ensemble.score(batch))
    for name, scores in small_engine.ensemble.layer_scores(batch).items():
        np.testing.assert_array_equal(loaded.ensemble.layers[name].score(batch), scores)


def test_engine_json_records_definitions_periods_and_rows(small_engine: TrainedEngine) -> None:
    bundle = small_engine.bundle_dir
    assert ENGINE_FILE in {e.name for e in read_manifest(bundle, "ensemble").files}
    doc = json.loads((bundle / ENGINE_FILE).read_text())
    assert doc["definitions_hash"] == DEFINITIONS_HASH
    assert tuple(doc["feature_names"]) == FEATURE_NAMES
    layers, ensemble = doc["periods"]["layers"], doc["periods"]["ensemble"]
    assert layers["end_ms"] == as_ms(LAYERS_UNTIL) - LABEL_DELAY_MS
    assert layers["labels_known_before_ms"] == as_ms(LAYERS_UNTIL)
    assert ensemble["start_ms"] == as_ms(LAYERS_UNTIL)
    assert ensemble["labels_known_before_ms"] == as_ms(ENSEMBLE_UNTIL)
    assert 0 < doc["rows"]["layers_frauds"] < doc["rows"]["layers"]
    assert 0 < doc["rows"]["ensemble_frauds"] < doc["rows"]["ensemble"]
    # Metrics are measured against the simulator's ground truth, for every layer.
    assert doc["metrics"]["truth"] == "outcomes"
    for name in ["ensemble", "xgboost", "iforest", "gnn"]:
        assert 0.0 <= doc["metrics"][name]["average_precision"] <= 1.0
    assert doc["metrics"]["ensemble"]["roc_auc"] > 0.5


def test_engine_decisions_run_every_layer(small_engine: TrainedEngine) -> None:
    settings = engine_settings(small_engine.bundle_dir)
    engine = load_engine(small_engine.bundle_dir, settings)
    batch = last_day_batch(100)
    decisions = engine.decide(batch, batch.transactions[-1].event_time)
    assert len(decisions) == len(batch)
    assert all(sorted(d.layers_run) == sorted(ALL_LAYERS) for d in decisions)
    assert not any(d.degraded or d.timeout_default for d in decisions)
    assert {d.model_version for d in decisions} == {engine.model_version}
    assert engine.model_version.startswith(small_engine.version)


def test_a_bundle_of_other_feature_definitions_is_refused_naming_both(
    small_engine: TrainedEngine, tmp_path: Path
) -> None:
    bundle = copy_bundle(small_engine, tmp_path)
    rewrite_engine_json(bundle, definitions_hash="0" * 16)
    with pytest.raises(DefinitionsMismatchError) as info:
        load_engine(bundle, engine_settings(bundle))
    error = info.value
    assert (error.expected, error.found, error.path) == (DEFINITIONS_HASH, "0" * 16, bundle)
    assert DEFINITIONS_HASH in str(error) and "0" * 16 in str(error)
    assert isinstance(error, FeatureHashMismatch)
    # Reading what it is, without using it, still works (the demo does that).
    assert read_engine_info(bundle, check_definitions=False).definitions_hash == "0" * 16


def test_an_edited_engine_json_fails_its_digest(
    small_engine: TrainedEngine, tmp_path: Path
) -> None:
    bundle = copy_bundle(small_engine, tmp_path)
    doc = json.loads((bundle / ENGINE_FILE).read_text())
    doc["definitions_hash"] = DEFINITIONS_HASH + "x"
    (bundle / ENGINE_FILE).write_text(json.dumps(doc))
    with pytest.raises(ArtifactDigestError):
        load_bundle(bundle)


def test_a_missing_bundle_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(EngineBundleMissing) as info:
        load_engine(tmp_path / "nowhere", engine_settings(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(info.value)
    assert "fraudstream demo" in str(info.value) and "fraudstream train" in str(info.value)


def test_retraining_replaces_the_bundle_whole(small_engine: TrainedEngine, tmp_path: Path) -> None:
    bundle = copy_bundle(small_engine, tmp_path)
    (bundle / "stray.txt").write_text("left from an older bundle")
    trained = train_small_engine(bundle)
    assert not (bundle / "stray.txt").exists()
    assert (bundle / MANIFEST_NAME).is_file()
    assert trained.version == small_engine.version  # same data, same seed: same engine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left


def test_layers_learn_only_labels_known_before_layers_until(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """By construction: every label of the world is moved to arrive exactly at
    ``layers_until`` except a chosen few; XGBoost must see those few frauds only."""
    world = small_world()
    cutoff = as_ms(LAYERS_UNTIL)
    frauds = world.labels.filter(
        (pl.col("is_fraud") == 1) & (pl.col("event_time_ms") < cutoff - LABEL_DELAY_MS)
    )
    early = set(frauds["transaction_id"].head(5).to_list())
    labels = world.labels.with_columns(
        pl.when(pl.col("transaction_id").is_in(list(early)))
        .then(pl.col("event_time_ms") + 1)
        .otherwise(pl.max_horizontal(pl.col("label_time_ms"), pl.lit(cutoff)))
        .alias("label_time_ms")
    )
    seen: list[np.ndarray[Any, Any]] = []
    original = XGBoostScorer.fit.__func__  # type: ignore[attr-defined]

    def spy(cls: type[XGBoostScorer], features: Any, y: Any, **kwargs: Any) -> XGBoostScorer:
        seen.append(np.asarray(y))
        return original(cls, features, y, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(XGBoostScorer, "fit", classmethod(spy))
    world_early = type(world)(world.data, world.history, labels, world.outcomes)
    train_small_engine(tmp_path / "bundle", world=world_early)
    (y,) = seen
    assert int(y.sum()) == len(early)
