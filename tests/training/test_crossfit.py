"""Cross-fitting: the meta model learns out-of-fold layer scores only, the engine keeps
layers fitted on the whole training period, and the bundle loads and scores."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest

from fraudstream.errors import TrainingPeriodError
from models.base import Scorer, Scores, ScoringBatch
from models.ensemble import MetaParams
from models.xgb import XGBoostScorer
from tests.training.factories import last_day_batch, small_params, train_small_engine
from training.crossfit import (
    CrossFitParams,
    cross_fit_ensemble,
    out_of_fold_scores,
    time_blocks,
)
from training.engine import TrainedEngine, load_bundle

Rows = npt.NDArray[np.int64]


class Memorising:
    """A fake layer that remembers the rows it was trained on and scores a row by
    whether it saw it (1.0: this row trained me, 0.5 otherwise), plus a little noise
    of the row's own label so the meta model has something to fit."""

    name: ClassVar[str] = "memorising"

    def __init__(self, rows: Rows, tag: str) -> None:
        self.rows = frozenset(int(r) for r in rows)
        self.version = f"{tag}-{len(self.rows)}-{min(self.rows)}"

    def score(self, batch: ScoringBatch) -> Scores:  # pragma: no cover - not called
        raise NotImplementedError


class Recorder:
    def __init__(self, y_all: npt.NDArray[np.float32]) -> None:
        self.calls: list[Rows] = []
        self.y_all = y_all

    def fit(self, rows: Rows, y: npt.NDArray[np.float32]) -> dict[str, Scorer]:
        self.calls.append(rows.copy())
        return {"a": Memorising(rows, "a"), "b": Memorising(rows, "b")}  # type: ignore[dict-item]

    def score(self, layers: Mapping[str, Scorer], rows: Rows) -> dict[str, Any]:
        out = {}
        for name, layer in layers.items():
            assert isinstance(layer, Memorising)
            seen = np.array([int(r) in layer.rows for r in rows], dtype=np.float64)
            out[name] = 0.25 + 0.5 * seen + 0.2 * self.y_all[rows]
        return out


def world(n: int = 600) -> tuple[Rows, npt.NDArray[np.float32]]:
    rows = np.arange(1000, 1000 + n, dtype=np.int64)  # positions in some history
    y = np.zeros(n, dtype=np.float32)
    y[::7] = 1.0
    return rows, y


def test_time_blocks_are_contiguous_and_near_equal() -> None:
    block = time_blocks(10, 3)
    assert block.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (np.diff(block) >= 0).all()
    sizes = np.bincount(time_blocks(1001, 7))
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("scheme", ["blocked", "forward"])
def test_no_out_of_fold_score_comes_from_a_layer_trained_on_its_row(scheme: str) -> None:
    rows, y = world()
    y_all = np.zeros(rows.max() + 1, dtype=np.float32)
    y_all[rows] = y
    recorder = Recorder(y_all)
    params = CrossFitParams(blocks=3, scheme=scheme)
    oof = out_of_fold_scores(rows, y, params, fit=recorder.fit, score=recorder.score)
    # Every score of a scored row was given by a layer that never saw that row.
    for scores in oof.scores.values():
        np.testing.assert_allclose(scores, 0.25 + 0.2 * y[oof.index])
    block = time_blocks(len(rows), 3)
    scored = [k for k in range(3) if scheme == "blocked" or k > 0]
    for k, trained, call in zip(scored, oof.trained_on, recorder.calls, strict=True):
        np.testing.assert_array_equal(rows[trained], call)
        held = np.flatnonzero(block == k)
        assert not np.intersect1d(held, trained).size
        if scheme == "forward":  # only earlier rows train
            assert trained.max() < held.min()
        else:  # every other block trains
            assert len(trained) + len(held) == len(rows)
    if scheme == "blocked":
        np.testing.assert_array_equal(oof.index, np.arange(len(rows)))
    else:  # the first block has nothing before it
        np.testing.assert_array_equal(oof.index, np.flatnonzero(block > 0))
    assert (np.diff(oof.index) > 0).all()  # time order kept for the calibration slice


def test_the_final_layers_learn_every_row_and_the_meta_records_their_versions() -> None:
    rows, y = world()
    y_all = np.zeros(rows.max() + 1, dtype=np.float32)
    y_all[rows] = y
    recorder = Recorder(y_all)
    ensemble, oof = cross_fit_ensemble(
        rows,
        y,
        CrossFitParams(blocks=2),
        fit=recorder.fit,
        score=recorder.score,
        flags=None,
        rules=None,
        meta=MetaParams(calibration="platt"),
    )
    assert len(recorder.calls) == 3  # two out-of-fold fits, then the final one
    np.testing.assert_array_equal(recorder.calls[-1], rows)
    assert {n: layer.version for n, layer in ensemble.layers.items()} == {
        "a": f"a-{len(rows)}-{rows.min()}",
        "b": f"b-{len(rows)}-{rows.min()}",
    }
    assert ensemble.meta.layer_versions == {n: lay.version for n, lay in ensemble.layers.items()}
    assert len(oof.index) == len(rows)


def test_a_block_without_frauds_to_learn_from_is_refused() -> None:
    rows, _ = world(60)
    y = np.zeros(len(rows), dtype=np.float32)
    y[-3:] = 1.0  # frauds only in the last block
    recorder = Recorder(np.zeros(rows.max() + 1, dtype=np.float32))
    with pytest.raises(TrainingPeriodError, match="block 1 training"):
        out_of_fold_scores(
            rows, y, CrossFitParams(blocks=2, scheme="forward"), fit=recorder.fit,
            score=recorder.score,
        )  # fmt: skip


def test_cross_fitting_off_is_refused_by_the_fold_builder() -> None:
    rows, y = world(60)
    recorder = Recorder(np.zeros(rows.max() + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="2 blocks"):
        out_of_fold_scores(rows, y, CrossFitParams(), fit=recorder.fit, score=recorder.score)


@pytest.fixture(scope="module")
def cross_fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainedEngine, list[int]]:
    sizes: list[int] = []
    original = XGBoostScorer.fit.__func__  # type: ignore[attr-defined]

    def spy(cls: type[XGBoostScorer], /, features: Any, y: Any, **kwargs: Any) -> XGBoostScorer:
        sizes.append(len(np.asarray(y)))
        return original(cls, features, y, **kwargs)  # type: ignore[no-any-return]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(XGBoostScorer, "fit", classmethod(spy))
        engine = train_small_engine(
            tmp_path_factory.mktemp("crossfit") / "bundle",
            params=small_params(cross_fit=CrossFitParams(blocks=2)),
        )
    return engine, sizes


def test_a_cross_fitted_engine_keeps_layers_fitted_on_the_whole_period(
    cross_fitted: tuple[TrainedEngine, list[int]],
) -> None:
    engine, sizes = cross_fitted
    whole = engine.info.rows["layers"]
    # Two out-of-fold fits on about half the rows each, then the final one on all.
    assert sizes[-1] == whole
    assert sorted(sizes[:2]) == [whole // 2, whole - whole // 2]
    assert whole > engine.info.rows["ensemble"]  # both periods, not the layers' only
    assert engine.info.metrics["cross_fit"] == "2 time blocks, blocked"
    meta = engine.ensemble.meta
    assert meta.layer_versions == {n: lay.version for n, lay in engine.ensemble.layers.items()}


def test_a_cross_fitted_bundle_loads_and_scores_identically(
    cross_fitted: tuple[TrainedEngine, list[int]], tmp_path: Path
) -> None:
    engine, _ = cross_fitted
    loaded = load_bundle(engine.bundle_dir)
    batch = last_day_batch(150)
    expected = engine.ensemble.score(batch)
    np.testing.assert_array_equal(loaded.ensemble.score(batch), expected)
    assert np.isfinite(expected).all() and ((expected >= 0) & (expected <= 1)).all()
    assert loaded.version == engine.version
