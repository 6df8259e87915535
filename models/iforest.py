"""The isolation-forest layer: how unusual a feature vector is, without labels.

Trained with scikit-learn, then compiled into one compact ONNX graph — a single
``TreeEnsembleRegressor`` summing each tree's path length, then scikit-learn's
``2 ** (-mean_path / c(max_samples))`` — and scored with onnxruntime on one thread.
That graph is both the saved format (never a pickle) and the fast path: skl2onnx's
own converter emits a few thousand small nodes per forest and scores slower than
scikit-learn itself, while the single tree-ensemble node is about ten times faster
(``benchmarks/bench_layers.py`` measures all three).

The raw anomaly is mapped to [0, 1] through the empirical CDF of the training rows,
so a score of 0.99 means "more isolated than 99% of the training transactions".
Missing features are filled with the training medians first; the forest never sees NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field
from sklearn.ensemble import IsolationForest

from fraudstream.errors import UnsafeArtifactError
from models.artifacts import (
    json_bytes,
    load_artifacts,
    npz_bytes,
    parse_json,
    parse_npz,
    save_artifacts,
)
from models.base import Scores, ScoringBatch
from models.tabular import Floats, Imputer, TrainingFeatures, content_version, training_matrix

KIND = "iforest"
MODEL_FILE = "forest.onnx"
ARRAYS_FILE = "arrays.npz"
PARAMS_FILE = "params.json"

# The only operators a forest graph of ours contains; anything else is refused on load.
_ALLOWED_OPS = {("ai.onnx.ml", "TreeEnsembleRegressor"), ("", "Cast"), ("", "Div")}
_ALLOWED_OPS |= {("", "Neg"), ("", "Pow")}


class IsolationForestParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    n_estimators: int = Field(default=100, ge=1, le=2000)
    max_samples: int = Field(default=256, ge=2)
    max_features: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    # Resolution of the stored empirical CDF that maps anomaly to [0, 1].
    cdf_points: int = Field(default=1025, ge=3, le=100_000)


class IsolationForestScorer:
    """Anomaly percentile of a feature vector; higher = more isolated = more suspect."""

    name: ClassVar[str] = "iforest"

    def __init__(
        self,
        onnx_model: bytes,
        feature_names: Sequence[str],
        *,
        imputer: Imputer,
        cdf_anomaly: Floats,
        cdf_level: Floats,
        version: str,
        forest: IsolationForest | None = None,
    ) -> None:
        self.feature_names = tuple(feature_names)
        self._onnx = onnx_model
        self._session = _session(onnx_model)
        self._imputer = imputer
        self._cdf_anomaly = cdf_anomaly
        self._cdf_level = cdf_level
        self._version = version
        # Only present right after fit(): kept for checks and benchmarks, never saved.
        self.forest = forest

    @property
    def version(self) -> str:
        return self._version

    @property
    def onnx_model(self) -> bytes:
        return self._onnx

    @classmethod
    def fit(
        cls,
        features: TrainingFeatures,
        labels: Any = None,
        *,
        feature_names: Sequence[str] | None = None,
        params: IsolationForestParams | None = None,
        version: str | None = None,
    ) -> IsolationForestScorer:
        """Fit on ``features``; with ``labels``, on the legitimate rows only, so that fraud
        is what stands out rather than part of what "normal" is learned from."""
        params = params or IsolationForestParams()
        train = training_matrix(features, feature_names)
        values = train.values
        if labels is not None:
            values = values[np.asarray(labels).reshape(-1) == 0]
        if len(values) < 2:
            raise ValueError("an isolation forest needs at least two training rows")
        imputer = Imputer.fit(values)
        filled = _as_tree_input(imputer.apply(values))
        forest = IsolationForest(
            n_estimators=params.n_estimators,
            max_samples=min(params.max_samples, len(filled)),
            max_features=params.max_features,
            random_state=params.seed,
        ).fit(filled)
        onnx_model = forest_to_onnx(forest, len(train.names))
        anomaly = _run(_session(onnx_model), filled)
        levels = np.linspace(0.0, 1.0, params.cdf_points)
        cdf_anomaly, cdf_level = _monotone_cdf(np.quantile(anomaly, levels), levels)
        version = version or content_version(
            "iforest", onnx_model, cdf_anomaly.tobytes(), imputer.medians.tobytes()
        )
        return cls(
            onnx_model,
            train.names,
            imputer=imputer,
            cdf_anomaly=cdf_anomaly,
            cdf_level=cdf_level,
            version=version,
            forest=forest,
        )

    # --- scoring -----------------------------------------------------------------------

    def tree_input(self, batch: ScoringBatch) -> npt.NDArray[np.float64]:
        """The imputed matrix the forest sees (float32 values, as scikit-learn uses)."""
        return _as_tree_input(self._imputer.apply(batch.features.select(self.feature_names).values))

    def anomaly(self, x: npt.NDArray[np.float64]) -> Floats:
        """``-score_samples`` of the forest for an imputed matrix, via onnxruntime."""
        return _run(self._session, x)

    def score(self, batch: ScoringBatch) -> Scores:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        anomaly = self.anomaly(self.tree_input(batch))
        return np.clip(np.interp(anomaly, self._cdf_anomaly, self._cdf_level), 0.0, 1.0)

    # --- persistence -------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        arrays = {
            "medians": self._imputer.medians,
            "cdf_anomaly": self._cdf_anomaly,
            "cdf_level": self._cdf_level,
        }
        params = {"feature_names": list(self.feature_names), "version": self._version}
        save_artifacts(
            directory,
            KIND,
            {
                MODEL_FILE: ("onnx", self._onnx),
                ARRAYS_FILE: ("npz", npz_bytes(arrays)),
                PARAMS_FILE: ("json", json_bytes(params)),
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        files = load_artifacts(directory, KIND)
        params = parse_json(files[PARAMS_FILE], PARAMS_FILE)
        arrays = parse_npz(files[ARRAYS_FILE], ARRAYS_FILE)
        _check_graph(files[MODEL_FILE], str(directory / MODEL_FILE))
        return cls(
            files[MODEL_FILE],
            [str(n) for n in params["feature_names"]],
            imputer=Imputer(arrays["medians"].astype(np.float64)),
            cdf_anomaly=arrays["cdf_anomaly"].astype(np.float64),
            cdf_level=arrays["cdf_level"].astype(np.float64),
            version=str(params["version"]),
        )


# --- the compiled forest -----------------------------------------------------------------


def forest_to_onnx(forest: IsolationForest, n_features: int) -> bytes:
    """One ONNX graph computing ``-forest.score_samples(x)`` for float64 input ``x``.

    Each tree contributes, at the leaf a row reaches, its depth plus the expected depth
    of the leaf's remaining samples, minus one — exactly what scikit-learn adds up.
    Thresholds stay float64 and the input holds float32 values, as in scikit-learn's
    own comparison, so splits agree bit for bit.
    """
    # Private, but it is the exact normaliser score_samples uses; the parity test
    # (tests/models/test_iforest.py) catches any change in a scikit-learn upgrade.
    from sklearn.ensemble._iforest import _average_path_length

    tree_ids: list[int] = []
    node_ids: list[int] = []
    feature_ids: list[int] = []
    thresholds: list[float] = []
    modes: list[str] = []
    true_ids: list[int] = []
    false_ids: list[int] = []
    leaf_trees: list[int] = []
    leaf_nodes: list[int] = []
    leaf_weights: list[float] = []
    per_tree = zip(
        forest.estimators_,
        forest.estimators_features_,
        forest._decision_path_lengths,
        forest._average_path_length_per_tree,
        strict=True,
    )
    for t, (estimator, features, depths, expected) in enumerate(per_tree):
        tree = estimator.tree_
        leaf_value = depths + expected - 1.0
        for node in range(tree.node_count):
            tree_ids.append(t)
            node_ids.append(node)
            left, right = int(tree.children_left[node]), int(tree.children_right[node])
            if left == -1:
                feature_ids.append(0)
                thresholds.append(0.0)
                modes.append("LEAF")
                true_ids.append(0)
                false_ids.append(0)
                leaf_trees.append(t)
                leaf_nodes.append(node)
                leaf_weights.append(float(leaf_value[node]))
            else:
                feature_ids.append(int(features[tree.feature[node]]))
                thresholds.append(float(tree.threshold[node]))
                modes.append("BRANCH_LEQ")
                true_ids.append(left)
                false_ids.append(right)
    denominator = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])
    trees = helper.make_node(
        "TreeEnsembleRegressor",
        ["x"],
        ["path_sum32"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        nodes_treeids=tree_ids,
        nodes_nodeids=node_ids,
        nodes_featureids=feature_ids,
        nodes_values_as_tensor=numpy_helper.from_array(np.asarray(thresholds, np.float64)),
        nodes_modes=modes,
        nodes_truenodeids=true_ids,
        nodes_falsenodeids=false_ids,
        target_treeids=leaf_trees,
        target_nodeids=leaf_nodes,
        target_ids=[0] * len(leaf_trees),
        target_weights_as_tensor=numpy_helper.from_array(np.asarray(leaf_weights, np.float64)),
    )
    nodes = [
        trees,
        helper.make_node("Cast", ["path_sum32"], ["path_sum"], to=TensorProto.DOUBLE),
        helper.make_node("Div", ["path_sum", "denominator"], ["mean_path"]),
        helper.make_node("Neg", ["mean_path"], ["neg_path"]),
        helper.make_node("Pow", ["two", "neg_path"], ["anomaly"]),
    ]
    # A forest fitted on one row has a zero denominator; scikit-learn scores it 1.
    safe_denominator = denominator if denominator > 0 else np.inf
    graph = helper.make_graph(
        nodes,
        "isolation_forest",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("anomaly", TensorProto.DOUBLE, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.array([safe_denominator], np.float64), "denominator"),
            numpy_helper.from_array(np.array([2.0], np.float64), "two"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="fraudstream",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _check_graph(data: bytes, where: str) -> None:
    """Refuse graphs with operators we never emit (custom domains, external data)."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise UnsafeArtifactError(where, f"not an ONNX model: {exc}") from exc
    for node in model.graph.node:
        if (node.domain, node.op_type) not in _ALLOWED_OPS:
            raise UnsafeArtifactError(where, f"unexpected operator {node.domain}:{node.op_type}")
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            raise UnsafeArtifactError(where, "external tensor data is not allowed")


def _session(onnx_model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One worker process per core: a thread pool per layer would only add contention.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: npt.NDArray[np.float64]) -> Floats:
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def _as_tree_input(values: Floats) -> npt.NDArray[np.float64]:
    # scikit-learn compares float32 inputs against float64 thresholds; so do we.
    return np.ascontiguousarray(values.astype(np.float32).astype(np.float64))


def _monotone_cdf(quantiles: Floats, levels: Floats) -> tuple[Floats, Floats]:
    """Strictly increasing knots for ``np.interp``: a tied quantile keeps its top level."""
    knots, first = np.unique(quantiles[::-1], return_index=True)
    top_levels = levels[::-1][first]
    return knots.astype(np.float64), top_levels.astype(np.float64)
