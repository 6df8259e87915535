"""The meta-ensemble: calibration, fallbacks for missing layers, persistence."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fraudstream.errors import UnsafeArtifactError
from models.artifacts import MANIFEST_NAME, sha256_hex
from models.ensemble import EnsembleScorer, MetaModel, MetaParams
from models.ensemble.stacking import sigmoid
from models.rules import FLAG_NAMES
from tests.models.factories import make_batch
from tests.models.factories_rules import fit_ensemble

LAYERS = ("graph", "trees", "noise")


def synthetic_scores(rows: int, seed: int) -> tuple[dict[str, Any], Any, Any]:
    """Layer scores that carry known signal, rule flags, and labels drawn from a known
    probability: calibration can be checked against the truth."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    truth = sigmoid(-3.0 + 1.4 * a + 0.9 * b)
    labels = (rng.random(rows) < truth).astype(np.int64)
    scores = {
        "trees": sigmoid(1.8 * a + 0.3 * rng.normal(size=rows)),
        "graph": sigmoid(0.7 * b - 1.0 + 0.3 * rng.normal(size=rows)),
        "noise": rng.random(rows),
    }
    flags = np.zeros((rows, len(FLAG_NAMES)))
    flags[:, 0] = a > 2.2  # a decline rule that catches the most extreme rows
    flags[:, 1] = (b > 1.5) & (rng.random(rows) < 0.5)
    flags[:, 3] = 0.2 * (a + b > 1.0)
    return scores, flags, labels


@cache
def fitted(calibration: str = "isotonic") -> MetaModel:
    scores, flags, labels = synthetic_scores(20_000, seed=1)
    return MetaModel.fit(
        scores, labels, rule_flags=flags, params=MetaParams(calibration=calibration)
    )


def _calibration_errors(predicted: Any, labels: Any, bins: int = 10) -> list[float]:
    """|mean predicted - observed rate| in equal-count bins of the prediction."""
    order = np.argsort(predicted, kind="stable")
    return [
        abs(float(predicted[part].mean()) - float(labels[part].mean()))
        for part in np.array_split(order, bins)
    ]


@pytest.mark.parametrize("calibration", ["isotonic", "platt"])
def test_probabilities_are_calibrated_on_a_later_sample(calibration: str) -> None:
    meta = fitted(calibration)
    scores, flags, labels = synthetic_scores(20_000, seed=2)
    predicted = meta.predict(scores, flags, len(labels))
    errors = _calibration_errors(predicted, labels)
    assert max(errors) < 0.04, errors
    assert abs(predicted.mean() - labels.mean()) < 0.01


def test_isotonic_falls_back_to_platt_when_the_slice_has_few_frauds() -> None:
    scores, flags, labels = synthetic_scores(2_000, seed=3)
    meta = MetaModel.fit(scores, labels, rule_flags=flags, params=MetaParams())
    assert meta.stacker(frozenset(meta.groups)).calibration.method == "platt"
    assert fitted("isotonic").stacker(frozenset(meta.groups)).calibration.method == "isotonic"


def test_the_stack_learns_which_layers_carry_signal() -> None:
    full = fitted().stacker(frozenset(fitted().groups))
    coef = dict(zip(full.columns, full.coef, strict=True))
    assert coef["trees"] > coef["graph"] > abs(coef["noise"])


# --- fallbacks --------------------------------------------------------------------------


def test_a_stacker_is_fitted_for_every_subset_of_inputs() -> None:
    meta = fitted()
    assert set(meta.groups) == {*LAYERS, "rules"}
    assert len(meta.to_json()["stackers"]) == 2 ** len(meta.groups)


def test_a_missing_layer_selects_the_model_fitted_without_it() -> None:
    meta = fitted()
    scores, flags, labels = synthetic_scores(20_000, seed=2)
    without = {k: v for k, v in scores.items() if k != "trees"}
    stacked = meta.stack(without, flags, len(labels))
    fallback = meta.stacker(frozenset({"graph", "noise", "rules"}))
    as_nan = {**without, "trees": np.full(len(labels), np.nan)}
    assert stacked.scores.tolist() == meta.predict(as_nan, flags, len(labels)).tolist()
    assert not stacked.used["trees"].any() and stacked.used["graph"].all()
    # The fallback is calibrated in its own right, and worse than the full model.
    assert max(_calibration_errors(stacked.scores, labels)) < 0.04
    assert fallback.columns == ("graph", "noise", *FLAG_NAMES)
    full = meta.predict(scores, flags, len(labels))
    assert _log_loss(full, labels) < _log_loss(stacked.scores, labels)


def _log_loss(p: Any, y: Any) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def test_rows_missing_different_layers_each_get_their_own_fallback() -> None:
    meta = fitted()
    scores, flags, _ = synthetic_scores(6, seed=4)
    scores["trees"][[1, 4]] = np.nan
    scores["graph"][4] = np.nan
    flags[5] = np.nan  # rule flags unknown for this row
    stacked = meta.stack(scores, flags, 6)
    for row, missing in [(0, set()), (1, {"trees"}), (4, {"trees", "graph"}), (5, {"rules"})]:
        present = {g for g in meta.groups if g not in missing}
        assert {g for g in meta.groups if stacked.used[g][row]} == present
        alone = meta.stack(
            {k: v[row : row + 1] for k, v in scores.items()}, flags[row : row + 1], 1
        )
        assert alone.scores[0] == stacked.scores[row]


def test_no_rule_flags_at_all_uses_the_models_without_rules() -> None:
    meta = fitted()
    scores, _, _ = synthetic_scores(5, seed=5)
    stacked = meta.stack(scores, None, 5)
    assert not stacked.used["rules"].any()


def test_contributions_add_up_to_the_linear_logit() -> None:
    meta = fitted("platt")
    scores, flags, _ = synthetic_scores(50, seed=6)
    stacked = meta.stack(scores, flags, 50)
    full = meta.stacker(frozenset(meta.groups))
    z = np.sum([stacked.contributions[g] for g in meta.groups], axis=0) + full.intercept
    c = full.calibration
    expected = sigmoid(np.asarray(c.slope * z + c.offset, dtype=np.float64))
    assert np.allclose(expected, stacked.scores, rtol=1e-12, atol=0)


# --- properties -------------------------------------------------------------------------

_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(0, 20),
    data=st.data(),
)
def test_scores_are_probabilities_for_any_inputs(rows: int, data: st.DataObject) -> None:
    arrays = hnp.arrays(np.float64, rows, elements=_any_float)
    scores = {name: data.draw(arrays) for name in data.draw(st.sets(st.sampled_from(LAYERS)))}
    flags = data.draw(
        st.none() | hnp.arrays(np.float64, (rows, len(FLAG_NAMES)), elements=_any_float)
    )
    predicted = fitted().predict(scores, flags, rows)
    assert predicted.shape == (rows,) and predicted.dtype == np.float64
    assert np.isfinite(predicted).all() and ((predicted >= 0) & (predicted <= 1)).all()


# --- fitting guards and persistence ---------------------------------------------------------


def test_fit_refuses_what_it_cannot_learn_from() -> None:
    scores, flags, labels = synthetic_scores(1000, seed=7)
    with pytest.raises(ValueError, match="finite"):
        MetaModel.fit({**scores, "trees": np.full(1000, np.nan)}, labels)
    with pytest.raises(ValueError, match="one class"):
        MetaModel.fit(scores, np.zeros(1000))
    with pytest.raises(ValueError, match="reserved"):
        MetaModel.fit({"rules": scores["trees"]}, labels)
    with pytest.raises(ValueError, match="at most"):
        MetaModel.fit({f"l{i}": scores["trees"] for i in range(6)}, labels, rule_flags=flags)


def test_json_round_trip_gives_identical_scores_and_version() -> None:
    meta = fitted()
    again = MetaModel.from_json(json.loads(json.dumps(meta.to_json())))
    scores, flags, _ = synthetic_scores(300, seed=8)
    assert again.version == meta.version
    assert again.predict(scores, flags, 300).tolist() == meta.predict(scores, flags, 300).tolist()


def test_a_meta_model_for_other_rule_flags_is_refused() -> None:
    doc = fitted().to_json()
    doc["flag_names"] = ["rule_decline"]
    with pytest.raises(ValueError, match="rule flags"):
        MetaModel.from_json(doc)


# --- the ensemble scorer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> EnsembleScorer:
    scorer = fit_ensemble(tmp_path_factory.mktemp("ensemble"))
    assert isinstance(scorer, EnsembleScorer)
    return scorer


def test_precomputed_scores_give_the_same_result_as_scoring(ensemble: EnsembleScorer) -> None:
    batch = make_batch(64)
    assert ensemble.rules is not None
    stacked = ensemble.score_from(
        ensemble.layer_scores(batch), ensemble.rules.evaluate(batch).flags(), len(batch)
    )
    assert stacked.scores.tolist() == ensemble.score(batch).tolist()


def test_layers_must_be_the_versions_the_meta_model_was_fitted_on(ensemble: EnsembleScorer) -> None:
    doc = {**ensemble.meta.to_json(), "layer_versions": {"xgboost": "xgb-other"}}
    meta = MetaModel.from_json(doc)
    with pytest.raises(ValueError, match="fitted on xgboost xgb-other"):
        EnsembleScorer(ensemble.layers, meta, ensemble.rules)
    with pytest.raises(ValueError, match="combines"):
        EnsembleScorer({"xgboost": ensemble.layers["xgboost"]}, ensemble.meta, ensemble.rules)


def _rewrite(directory: Path, name: str, doc: dict[str, Any]) -> None:
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    (directory / name).write_bytes(data)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    for entry in manifest["files"]:
        if entry["name"] == name:
            entry["sha256"], entry["size"] = sha256_hex(data), len(data)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_load_imports_only_known_layer_kinds(ensemble: EnsembleScorer, tmp_path: Path) -> None:
    ensemble.save(tmp_path / "saved")
    directory = tmp_path / "attacked"
    shutil.copytree(tmp_path / "saved", directory)
    listing = json.loads((directory / "ensemble.json").read_text())
    # Even with the digest rewritten, a kind outside the fixed table is never imported.
    listing["layers"]["xgboost"] = "os"
    _rewrite(directory, "ensemble.json", listing)
    with pytest.raises(UnsafeArtifactError, match="unknown layer"):
        EnsembleScorer.load(directory)


def test_load_refuses_a_meta_model_that_does_not_match_its_listing(
    ensemble: EnsembleScorer, tmp_path: Path
) -> None:
    ensemble.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["stackers"][-1]["intercept"] += 1.0
    _rewrite(tmp_path, "meta.json", meta)
    with pytest.raises(UnsafeArtifactError, match="does not match"):
        EnsembleScorer.load(tmp_path)
