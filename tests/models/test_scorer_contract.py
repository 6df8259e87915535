"""The contract every scorer keeps (models/base.py), run against every scorer factory.

Factories come from ``tests/models/factories.py`` (learned layers) and, when it exists,
``tests/models/factories_rules.py`` (rules, meta-ensemble).
"""

from __future__ import annotations

import importlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest

from features.matrix import FeatureMatrix
from fraudstream.errors import ArtifactDigestError, UnsafeArtifactError
from fraudstream.wire.schemas import Reason
from models.artifacts import MANIFEST_NAME, sha256_hex
from models.base import Explainer, Scorer, ScoringBatch
from tests.models.factories import FACTORIES as LEARNED_FACTORIES
from tests.models.factories import make_batch


def _all_factories() -> dict[str, Callable[[Path], Scorer]]:
    factories = dict(LEARNED_FACTORIES)
    try:
        rules = importlib.import_module("tests.models.factories_rules")
    except ModuleNotFoundError as exc:
        # Only a missing module is tolerated; a broken one must fail loudly.
        if exc.name != "tests.models.factories_rules":
            raise
    else:
        factories.update(rules.FACTORIES)
    return factories


FACTORIES = _all_factories()


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def scorer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    name: str = request.param
    return FACTORIES[name](tmp_path_factory.mktemp(f"factory-{name}"))


@pytest.fixture(scope="module")
def saved(scorer: Scorer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"saved-{scorer.name}")
    scorer.save(directory)
    return directory


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(saved, target)
    return target


def _manifest_files(directory: Path) -> list[dict[str, object]]:
    files: list[dict[str, object]] = json.loads((directory / MANIFEST_NAME).read_text())["files"]
    return files


# --- identity and output ---------------------------------------------------------------------


def test_is_a_scorer_with_a_name_and_version(scorer: Scorer) -> None:
    assert isinstance(scorer, Scorer)
    assert isinstance(scorer.name, str) and scorer.name
    assert isinstance(scorer.version, str) and scorer.version


@pytest.mark.parametrize("rows", [0, 1, 7, 256])
def test_one_float64_score_in_unit_interval_per_row(scorer: Scorer, rows: int) -> None:
    scores = scorer.score(make_batch(rows))
    assert scores.shape == (rows,)
    assert scores.dtype == np.float64
    assert np.isfinite(scores).all()
    assert ((scores >= 0.0) & (scores <= 1.0)).all()


def test_scores_are_not_constant(scorer: Scorer) -> None:
    # A scorer that ignores its input would pass every other check here.
    assert np.ptp(scorer.score(make_batch(256))) > 0


def test_same_batch_same_scores(scorer: Scorer) -> None:
    batch = make_batch(128)
    first = scorer.score(batch)
    again = scorer.score(make_batch(128))
    np.testing.assert_array_equal(first, scorer.score(batch))
    np.testing.assert_array_equal(first, again)


def test_a_row_scores_the_same_alone_or_in_a_batch(scorer: Scorer) -> None:
    batch = make_batch(64)
    together = scorer.score(batch)
    for i in (0, 17, 63):
        alone = ScoringBatch(
            [batch.transactions[i]],
            FeatureMatrix(batch.features.names, batch.features.values[i : i + 1]),
        )
        np.testing.assert_allclose(scorer.score(alone), together[i : i + 1], rtol=0, atol=1e-9)


# --- missing and odd features --------------------------------------------------------------


@pytest.mark.parametrize("missing", [0.3, 1.0])
def test_missing_features_give_valid_scores(scorer: Scorer, missing: float) -> None:
    scores = scorer.score(make_batch(200, missing=missing))
    assert np.isfinite(scores).all()
    assert ((scores >= 0.0) & (scores <= 1.0)).all()


def test_absent_columns_are_missing_and_extra_columns_ignored(scorer: Scorer) -> None:
    batch = make_batch(50)
    names = batch.features.names
    reordered = FeatureMatrix(
        ("unrelated_feature", *reversed(names)),
        np.column_stack([np.full(50, 7.0), batch.features.values[:, ::-1]]),
    )
    as_given = scorer.score(batch)
    np.testing.assert_array_equal(
        scorer.score(ScoringBatch(batch.transactions, reordered)), as_given
    )
    no_features = ScoringBatch(batch.transactions, FeatureMatrix.empty((), 50), True)
    scores = scorer.score(no_features)
    assert scores.shape == (50,) and np.isfinite(scores).all()
    all_nan = ScoringBatch(batch.transactions, FeatureMatrix.empty(names, 50), True)
    np.testing.assert_array_equal(scorer.score(all_nan), scores)


def test_infinite_feature_values_give_valid_scores(scorer: Scorer) -> None:
    batch = make_batch(20)
    values = batch.features.values.copy()
    values[::2, 0] = np.inf
    values[1::2, -1] = -np.inf
    scores = scorer.score(
        ScoringBatch(batch.transactions, FeatureMatrix(batch.features.names, values))
    )
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()


# --- explanations ---------------------------------------------------------------------------


def test_explanations_are_valid_reasons_when_offered(scorer: Scorer) -> None:
    if not isinstance(scorer, Explainer):
        pytest.skip(f"{scorer.name} does not explain")
    batch = make_batch(40, missing=0.2)
    reasons = scorer.explain(batch, scorer.score(batch), top=3)
    assert len(reasons) == 40
    assert any(reasons)
    for row in reasons:
        assert len(row) <= 3
        for reason in row:
            # Round-tripping through the wire schema enforces its length limits.
            assert msgspec.json.decode(msgspec.json.encode(reason), type=Reason) == reason
            assert reason.code and reason.text


# --- persistence ----------------------------------------------------------------------------


def test_save_then_load_gives_identical_scores(scorer: Scorer, saved: Path, tmp_path: Path) -> None:
    # Loaded from a copy elsewhere: nothing may depend on where it was saved.
    loaded = type(scorer).load(_copy(saved, tmp_path))
    batch = make_batch(256, missing=0.1)
    assert loaded.name == scorer.name
    assert loaded.version == scorer.version
    np.testing.assert_array_equal(loaded.score(batch), scorer.score(batch))


def test_saving_again_gives_byte_identical_files(
    scorer: Scorer, saved: Path, tmp_path: Path
) -> None:
    # Reproducible artefacts: the same model always has the same digests.
    scorer.save(tmp_path)
    again = {f["name"]: f["sha256"] for f in _manifest_files(tmp_path)}
    assert again == {f["name"]: f["sha256"] for f in _manifest_files(saved)}
    assert again


def test_load_refuses_a_tampered_file(scorer: Scorer, saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    for entry in _manifest_files(directory):
        path = directory / str(entry["name"])
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(ArtifactDigestError):
            type(scorer).load(directory)
        shutil.rmtree(directory)
        directory = _copy(saved, tmp_path)


@pytest.mark.parametrize("update_digest", [False, True])
def test_load_refuses_a_pickle_in_place_of_a_file(
    scorer: Scorer, saved: Path, tmp_path: Path, update_digest: bool
) -> None:
    directory = _copy(saved, tmp_path)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    entry = manifest["files"][0]
    payload = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)
    (directory / entry["name"]).write_bytes(payload)
    if update_digest:
        # Even an attacker who rewrites the manifest cannot get a pickle loaded.
        entry["sha256"] = sha256_hex(payload)
        entry["size"] = len(payload)
        (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeArtifactError):
        type(scorer).load(directory)


def test_load_refuses_a_manifest_naming_a_pickle_file(
    scorer: Scorer, saved: Path, tmp_path: Path
) -> None:
    directory = _copy(saved, tmp_path)
    payload = pickle.dumps([1, 2, 3])
    (directory / "extra.pkl").write_bytes(payload)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["files"].append(
        {"name": "extra.pkl", "format": "json", "sha256": sha256_hex(payload), "size": len(payload)}
    )
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeArtifactError):
        type(scorer).load(directory)


def test_load_refuses_an_unknown_format(scorer: Scorer, saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["files"][0]["format"] = "joblib"
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeArtifactError):
        type(scorer).load(directory)


def test_load_refuses_a_directory_without_manifest(
    scorer: Scorer, saved: Path, tmp_path: Path
) -> None:
    directory = _copy(saved, tmp_path)
    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(UnsafeArtifactError):
        type(scorer).load(directory)
