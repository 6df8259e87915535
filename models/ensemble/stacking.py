"""The meta-model: a calibrated stack over the layer scores and the rule flags.

:class:`MetaModel` is the pure stacker. Its inputs are the logit of each learned
layer's score and the four rule flags (:data:`models.rules.FLAG_NAMES`); a small L2
logistic regression (our own Newton solver: a few dozen lines, deterministic, saved as
plain JSON numbers) combines them, and an isotonic map fitted on the **latest** rows
turns that into a calibrated probability (Platt scaling instead when that slice holds
fewer than ``min_isotonic_positives`` frauds: isotonic steps overfit a small slice).
Fit it on a period after the one its layers were trained on, so their scores there
look like live scores, not like scores on their own training set.

Fallbacks: one stacker is fitted for **every subset** of the inputs (layers and the
rule flags as one group), so when a breaker skips a layer, or a layer gives NaN for a
row, that row is scored by the model fitted without it, not by one that imputes it.
With up to six groups that is at most 64 tiny regressions.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from models.artifacts import json_bytes
from models.base import Scores
from models.rules import FLAG_NAMES
from models.rules.evaluate import LAYER as RULES

__all__ = ["RULES", "Calibration", "MetaModel", "MetaParams", "Stacked", "Stacker"]

Floats = npt.NDArray[np.float64]
MAX_GROUPS = 6
_EPS = 1e-6


class MetaParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    l2: float = Field(default=1.0, ge=0.0)
    calibration: Literal["isotonic", "platt"] = "isotonic"
    # The latest share of the rows (in time order) that fits the calibration only.
    calibration_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    # Isotonic needs enough frauds to be stable; below this Platt is used instead.
    min_isotonic_positives: int = Field(default=200, ge=1)
    max_iter: int = Field(default=50, ge=1)


def logit(p: npt.ArrayLike) -> Floats:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def sigmoid(z: Floats) -> Floats:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def _fit_logistic(x: Floats, y: Floats, l2: float, max_iter: int) -> tuple[Floats, float]:
    """L2-regularised logistic regression on ``x`` (already scaled): damped Newton steps
    with backtracking, so nearly separable data converges instead of overshooting."""
    n, d = x.shape
    design = np.column_stack([np.ones(n), x])
    penalty = np.full(d + 1, l2)
    penalty[0] = 0.0

    def objective(w: Floats) -> float:
        eta = design @ w
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * np.sum(penalty * w * w))

    weights = np.zeros(d + 1)
    weights[0] = float(logit(np.clip(y.mean(), 1e-4, 1 - 1e-4)))
    current = objective(weights)
    for _ in range(max_iter):
        p = sigmoid(design @ weights)
        gradient = design.T @ (p - y) + penalty * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-6:
            candidate = weights - size * step
            value = objective(candidate)
            if value <= current - 1e-4 * size * float(gradient @ step):
                break
            size /= 2.0
        else:
            break  # no decrease along the Newton direction: at the optimum
        weights, improvement, current = candidate, current - value, value
        if improvement < 1e-10 * max(1.0, abs(current)):
            break
    return weights[1:].copy(), float(weights[0])


@dataclass(frozen=True)
class Calibration:
    """Maps the stacker's linear logit to a probability."""

    method: Literal["isotonic", "platt"]
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    slope: float = 1.0
    offset: float = 0.0

    def apply(self, z: Floats) -> Floats:
        if self.method == "isotonic":
            return np.interp(z, self.knots_x, self.knots_y)
        return sigmoid(self.slope * z + self.offset)

    @classmethod
    def fit(cls, z: Floats, y: Floats, params: MetaParams) -> Calibration:
        positives = int(y.sum())
        use_isotonic = (
            params.calibration == "isotonic"
            and min(positives, len(y) - positives) >= params.min_isotonic_positives
        )
        if use_isotonic:
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y)
            return cls(
                "isotonic",
                tuple(map(float, iso.X_thresholds_)),
                tuple(map(float, iso.y_thresholds_)),
            )
        coef, intercept = _fit_logistic(z[:, None], y, 1e-3, params.max_iter)
        return cls("platt", slope=float(coef[0]), offset=intercept)


@dataclass(frozen=True)
class Stacker:
    """One logistic regression over the inputs of a subset of groups, plus calibration."""

    groups: tuple[str, ...]
    columns: tuple[str, ...]
    mean: Floats
    scale: Floats
    coef: Floats
    intercept: float
    calibration: Calibration

    def terms(self, x: Floats) -> Floats:
        """Per-column contributions to the linear logit."""
        return (x - self.mean) / self.scale * self.coef

    def predict(self, x: Floats) -> Floats:
        z = self.terms(x).sum(axis=1) + self.intercept
        return np.clip(self.calibration.apply(z), 0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "columns": list(self.columns),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "calibration": {
                "method": self.calibration.method,
                "knots_x": list(self.calibration.knots_x),
                "knots_y": list(self.calibration.knots_y),
                "slope": self.calibration.slope,
                "offset": self.calibration.offset,
            },
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Stacker:
        c = doc["calibration"]
        if c["method"] not in ("isotonic", "platt"):
            raise ValueError(f"unknown calibration {c['method']!r}")
        mean, scale, coef = (
            np.asarray(doc[k], dtype=np.float64) for k in ("mean", "scale", "coef")
        )
        if not all(a.shape == (len(doc["columns"]),) for a in (mean, scale, coef)):
            raise ValueError("stacker arrays do not match its columns")
        return cls(
            tuple(map(str, doc["groups"])),
            tuple(map(str, doc["columns"])),
            mean,
            scale,
            coef,
            float(doc["intercept"]),
            Calibration(
                c["method"],
                tuple(map(float, c["knots_x"])),
                tuple(map(float, c["knots_y"])),
                float(c["slope"]),
                float(c["offset"]),
            ),
        )


@dataclass(frozen=True)
class Stacked:
    """Meta-model output: probabilities, the groups each row was scored with, and each
    group's contribution to the row's logit (0 where the group was not used)."""

    scores: Scores
    used: dict[str, npt.NDArray[np.bool_]]
    contributions: dict[str, Floats]


class MetaModel:
    """Calibrated stacker with a fallback for every subset of missing inputs."""

    def __init__(
        self,
        layers: Sequence[str],
        uses_rules: bool,
        stackers: Mapping[frozenset[str], Stacker],
        layer_versions: Mapping[str, str] | None = None,
    ) -> None:
        self.layers = tuple(layers)
        self.uses_rules = uses_rules
        self.groups = (*self.layers, *((RULES,) if uses_rules else ()))
        missing = [s for s in _subsets(self.groups) if s not in stackers]
        if missing:
            raise ValueError(f"no stacker for inputs {sorted(missing[0])}")
        self._stackers = dict(stackers)
        self.layer_versions = dict(layer_versions or {})
        self.version = "meta-" + hashlib.sha256(json_bytes(self.to_json())).hexdigest()[:12]

    # --- fitting ------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        layer_scores: Mapping[str, npt.ArrayLike],
        labels: npt.ArrayLike,
        *,
        rule_flags: npt.ArrayLike | None = None,
        params: MetaParams | None = None,
        layer_versions: Mapping[str, str] | None = None,
    ) -> MetaModel:
        """Fit on rows **in time order**; the latest ``calibration_fraction`` calibrates."""
        params = params or MetaParams()
        layers = tuple(sorted(layer_scores))
        if RULES in layers:
            raise ValueError(f"{RULES!r} is reserved for the rule flags")
        if len(layers) + (rule_flags is not None) > MAX_GROUPS:
            raise ValueError(f"at most {MAX_GROUPS} inputs (layers + rules)")
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        x, present = _design(layers, rule_flags is not None, layer_scores, rule_flags, len(y))
        if not present.all():
            raise ValueError("training inputs must be finite (no NaN layer scores)")
        cut = round(len(y) * (1.0 - params.calibration_fraction))
        if min(cut, len(y) - cut) < 10 or len(np.unique(y[:cut])) < 2:
            raise ValueError("too few rows (or one class only) to fit and calibrate")
        columns = _columns(layers, rule_flags is not None)
        groups = (*layers, *((RULES,) if rule_flags is not None else ()))
        stackers = {
            subset: _fit_stacker(subset, groups, columns, x, y, cut=cut, params=params)
            for subset in _subsets(groups)
        }
        return cls(layers, rule_flags is not None, stackers, layer_versions)

    # --- scoring ------------------------------------------------------------------------

    def stack(
        self,
        layer_scores: Mapping[str, npt.ArrayLike],
        rule_flags: npt.ArrayLike | None,
        rows: int,
    ) -> Stacked:
        """Score ``rows`` rows from whatever inputs are present; NaN marks a missing one."""
        x, present = _design(self.layers, self.uses_rules, layer_scores, rule_flags, rows)
        columns = _columns(self.layers, self.uses_rules)
        scores = np.zeros(rows, dtype=np.float64)
        used = {g: np.zeros(rows, dtype=np.bool_) for g in self.groups}
        contributions = {g: np.zeros(rows, dtype=np.float64) for g in self.groups}
        if rows == 0:
            return Stacked(scores, used, contributions)
        patterns, which = np.unique(present, axis=0, return_inverse=True)
        for k, pattern in enumerate(patterns):
            rows_k = np.flatnonzero(which.reshape(-1) == k)
            subset = frozenset(g for g, on in zip(self.groups, pattern, strict=True) if on)
            stacker = self._stackers[subset]
            cols = np.array([columns.index(c) for c in stacker.columns], dtype=np.int64)
            xk = x[np.ix_(rows_k, cols)]
            scores[rows_k] = stacker.predict(xk)
            terms = stacker.terms(xk)
            for j, column in enumerate(stacker.columns):
                group = _group_of(column)
                contributions[group][rows_k] += terms[:, j]
            for g in subset:
                used[g][rows_k] = True
        return Stacked(scores, used, contributions)

    def predict(
        self, layer_scores: Mapping[str, npt.ArrayLike], rule_flags: npt.ArrayLike | None, rows: int
    ) -> Scores:
        return self.stack(layer_scores, rule_flags, rows).scores

    def stacker(self, groups: frozenset[str]) -> Stacker:
        return self._stackers[groups]

    # --- persistence --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "uses_rules": self.uses_rules,
            "flag_names": list(FLAG_NAMES),
            "layer_versions": dict(sorted(self.layer_versions.items())),
            "stackers": [self._stackers[s].to_json() for s in _subsets(self.groups)],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MetaModel:
        if list(doc["flag_names"]) != list(FLAG_NAMES):
            raise ValueError("rule flags differ from the ones this build computes")
        stackers = [Stacker.from_json(s) for s in doc["stackers"]]
        return cls(
            [str(n) for n in doc["layers"]],
            bool(doc["uses_rules"]),
            {frozenset(s.groups): s for s in stackers},
            {str(k): str(v) for k, v in doc["layer_versions"].items()},
        )


def _subsets(groups: Sequence[str]) -> list[frozenset[str]]:
    return [frozenset(c) for r in range(len(groups) + 1) for c in itertools.combinations(groups, r)]


def _columns(layers: Sequence[str], uses_rules: bool) -> tuple[str, ...]:
    return (*layers, *(FLAG_NAMES if uses_rules else ()))


def _group_of(column: str) -> str:
    return RULES if column in FLAG_NAMES else column


def _design(
    layers: Sequence[str],
    uses_rules: bool,
    layer_scores: Mapping[str, npt.ArrayLike],
    rule_flags: npt.ArrayLike | None,
    rows: int,
) -> tuple[Floats, npt.NDArray[np.bool_]]:
    """Input matrix (logits, flags) and which groups are present per row."""
    blocks: list[Floats] = []
    present: list[npt.NDArray[np.bool_]] = []
    for layer in layers:
        raw = layer_scores.get(layer)
        s = np.full(rows, np.nan) if raw is None else np.asarray(raw, np.float64).reshape(rows)
        blocks.append(np.where(np.isnan(s), 0.0, logit(s))[:, None])
        present.append(~np.isnan(s))
    if uses_rules:
        f = (
            np.full((rows, len(FLAG_NAMES)), np.nan)
            if rule_flags is None
            else np.asarray(rule_flags, np.float64).reshape(rows, len(FLAG_NAMES))
        )
        ok: npt.NDArray[np.bool_] = np.asarray(np.isfinite(f).all(axis=1), dtype=np.bool_)
        # Flags are 0/1 and summed adjustments; beyond +-10 a value means nothing more,
        # and bounding it keeps every term finite.
        blocks.append(np.where(ok[:, None], np.clip(np.nan_to_num(f), -10.0, 10.0), 0.0))
        present.append(ok)
    x = np.hstack(blocks) if blocks else np.zeros((rows, 0))
    mask = np.column_stack(present) if present else np.zeros((rows, 0), dtype=np.bool_)
    return x, mask


def _fit_stacker(
    subset: frozenset[str],
    groups: Sequence[str],
    columns: Sequence[str],
    x: Floats,
    y: Floats,
    *,
    cut: int,
    params: MetaParams,
) -> Stacker:
    ordered = tuple(g for g in groups if g in subset)
    chosen = tuple(c for c in columns if _group_of(c) in subset)
    idx = [columns.index(c) for c in chosen]
    fit_x, cal_x = x[:cut][:, idx], x[cut:][:, idx]
    mean = fit_x.mean(axis=0) if idx else np.zeros(0)
    scale = fit_x.std(axis=0) if idx else np.zeros(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    coef, intercept = _fit_logistic((fit_x - mean) / scale, y[:cut], params.l2, params.max_iter)
    z = ((cal_x - mean) / scale) @ coef + intercept
    calibration = Calibration.fit(z, y[cut:], params)
    return Stacker(ordered, chosen, mean, scale, coef, intercept, calibration)
