from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from sklearn.metrics import roc_auc_score

from features.matrix import FeatureMatrix
from fraudstream.errors import UnsafeArtifactError
from models.artifacts import load_artifacts, save_artifacts
from models.base import ScoringBatch
from models.iforest import IsolationForestParams, IsolationForestScorer
from tests.models.factories import make_batch

NAMES = tuple(f"f{i}" for i in range(6))


def _batch(values: np.ndarray, names: tuple[str, ...] = NAMES) -> ScoringBatch:
    template = make_batch(1)
    return ScoringBatch(list(template.transactions) * len(values), FeatureMatrix(names, values))


def _inliers(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, len(NAMES)))


@pytest.fixture(scope="module")
def model() -> IsolationForestScorer:
    return IsolationForestScorer.fit(
        FeatureMatrix(NAMES, _inliers(3000, 0)),
        params=IsolationForestParams(n_estimators=100, max_features=0.7),
    )


def test_planted_outliers_rank_above_inliers(model: IsolationForestScorer) -> None:
    rng = np.random.default_rng(1)
    inliers = _inliers(500, 2)
    outliers = rng.normal(size=(25, len(NAMES))) + rng.choice([-6.0, 6.0], size=(25, len(NAMES)))
    scores = model.score(_batch(np.vstack([inliers, outliers])))
    labels = np.r_[np.zeros(500), np.ones(25)]
    assert roc_auc_score(labels, scores) > 0.99
    assert scores[500:].min() > np.quantile(scores[:500], 0.9)


def test_compiled_graph_matches_scikit_learn(model: IsolationForestScorer) -> None:
    assert model.forest is not None
    rng = np.random.default_rng(3)
    x = np.vstack([_inliers(400, 4), rng.normal(scale=5.0, size=(100, len(NAMES)))])
    batch = _batch(x)
    np.testing.assert_allclose(
        model.anomaly(model.tree_input(batch)), -model.forest.score_samples(x), rtol=0, atol=1e-6
    )


def test_scores_are_training_percentiles(model: IsolationForestScorer) -> None:
    # Fresh rows from the training distribution spread evenly over [0, 1].
    scores = model.score(_batch(_inliers(4000, 5)))
    for level in (0.1, 0.5, 0.9):
        assert abs((scores <= level).mean() - level) < 0.04


def test_missing_values_are_scored_as_the_training_median(model: IsolationForestScorer) -> None:
    x = _inliers(3000, 0)
    medians = np.median(x, axis=0)
    partly = np.array([[np.nan, *medians[1:]]])
    scores = model.score(_batch(np.vstack([partly, medians[None, :], np.full((1, 6), np.nan)])))
    assert scores[0] == scores[1] == scores[2]


def test_fitting_with_labels_learns_normal_from_legitimate_rows_only() -> None:
    rng = np.random.default_rng(6)
    legit = rng.normal(size=(2000, len(NAMES)))
    fraud = rng.normal(loc=4.0, scale=0.3, size=(600, len(NAMES)))  # a dense fraud cluster
    values = FeatureMatrix(NAMES, np.vstack([legit, fraud]))
    labels = np.r_[np.zeros(2000), np.ones(600)]
    params = IsolationForestParams(n_estimators=60)
    blind = IsolationForestScorer.fit(values, params=params)
    informed = IsolationForestScorer.fit(values, labels, params=params)
    probe = _batch(rng.normal(loc=4.0, scale=0.3, size=(100, len(NAMES))))
    assert informed.score(probe).mean() > blind.score(probe).mean() + 0.1
    assert informed.score(probe).min() > 0.95


def test_saved_graph_runs_in_plain_onnxruntime(
    model: IsolationForestScorer, tmp_path: Path
) -> None:
    model.save(tmp_path)
    session = ort.InferenceSession(
        str(tmp_path / "forest.onnx"), providers=["CPUExecutionProvider"]
    )
    batch = _batch(_inliers(50, 7))
    x = model.tree_input(batch)
    (out,) = session.run(None, {"x": x})
    np.testing.assert_array_equal(out.reshape(-1), model.anomaly(x))
    ops = {node.op_type for node in onnx.load(str(tmp_path / "forest.onnx")).graph.node}
    assert "TreeEnsembleRegressor" in ops and len(ops) <= 5


def test_load_refuses_a_graph_with_foreign_operators(
    model: IsolationForestScorer, tmp_path: Path
) -> None:
    model.save(tmp_path / "good")
    files = load_artifacts(tmp_path / "good", "iforest")
    node = helper.make_node("MyOp", ["x"], ["anomaly"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "evil",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 6])],
        [helper.make_tensor_value_info("anomaly", TensorProto.DOUBLE, [None, 1])],
    )
    foreign = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("com.example", 1)]
    ).SerializeToString()
    save_artifacts(
        tmp_path / "evil",
        "iforest",
        {
            "forest.onnx": ("onnx", foreign),
            "arrays.npz": ("npz", files["arrays.npz"]),
            "params.json": ("json", files["params.json"]),
        },
    )
    with pytest.raises(UnsafeArtifactError, match="operator"):
        IsolationForestScorer.load(tmp_path / "evil")


def test_loaded_model_has_no_scikit_learn_object(
    model: IsolationForestScorer, tmp_path: Path
) -> None:
    model.save(tmp_path)
    assert IsolationForestScorer.load(tmp_path).forest is None


def test_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="two"):
        IsolationForestScorer.fit(FeatureMatrix(NAMES, _inliers(1, 0)))
