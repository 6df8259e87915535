"""Cross-fitting: stack on out-of-fold layer scores, then keep layers fitted on everything.

Without it, a training period is cut in two: the layers learn the earlier part, the meta
model the later part (scored by layers that never saw it), and the engine keeps those
layers, so they never learn from the latest days. With cross-fitting
(:class:`CrossFitParams` ``blocks >= 2``) the whole period is cut into ``blocks``
contiguous time blocks of about equal row counts, and

1. for each block, the layers are fitted on the other blocks (``scheme="blocked"``) or
   on the earlier blocks only (``scheme="forward"``, which leaves the first block
   unscored) and score the held-out block: out-of-fold scores;
2. the meta model (every fallback stacker and its calibration) is fitted on those
   out-of-fold scores, in time order, with the period's labels;
3. the layers are refitted on the whole period, and the engine is those layers plus
   that meta model, which records the *final* layers' versions.

So no row's layer score that fits the meta model comes from a layer trained on that
row, and the layers that run learned every labelled row. The meta model was fitted on
scores of layers of the same configuration trained on less data, which is what
``meta.layer_versions`` vouches for: it is only ever paired with these final layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from fraudstream.errors import TrainingPeriodError
from models.base import Scorer
from models.ensemble import EnsembleScorer, MetaModel, MetaParams
from models.rules import RulesScorer

Rows = npt.NDArray[np.int64]
Targets = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]
# (rows, targets) -> fitted layers by name
Fitter = Callable[[Rows, Targets], Mapping[str, Scorer]]
# (layers, rows) -> each layer's score of each row
LayerScoring = Callable[[Mapping[str, Scorer], Rows], Mapping[str, Floats]]
# rows -> rule flags of each row
RuleFlags = Callable[[Rows], npt.NDArray[np.float64]]


class CrossFitParams(BaseModel):
    """``blocks`` 0 (or 1): no cross-fitting, the layers / meta split in time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    blocks: int = Field(default=0, ge=0, le=28)
    scheme: Literal["blocked", "forward"] = "blocked"

    @property
    def enabled(self) -> bool:
        return self.blocks >= 2

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        return f"{self.blocks} time blocks, {self.scheme}"


def time_blocks(n: int, blocks: int) -> npt.NDArray[np.int64]:
    """Block index of each of ``n`` rows in time order: contiguous, near-equal sizes."""
    if blocks < 1:
        raise ValueError("blocks must be at least 1")
    return np.asarray(np.arange(n, dtype=np.int64) * blocks // max(n, 1), dtype=np.int64)


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold layer scores: ``index`` (positions in the period's rows, in time order)
    and each layer's score of those rows; ``trained_on[k]`` are the positions that
    trained the layers which scored the ``k``-th scored block."""

    index: npt.NDArray[np.int64]
    scores: dict[str, Floats]
    trained_on: tuple[npt.NDArray[np.int64], ...]

    def merge(self, other: OutOfFold) -> OutOfFold:
        """The scores of both (fitted on the same blocks) side by side."""
        if not np.array_equal(self.index, other.index):
            raise ValueError("out-of-fold scores of different rows")
        return OutOfFold(self.index, {**self.scores, **other.scores}, self.trained_on)


def out_of_fold_scores(
    rows: Rows,
    y: Targets,
    params: CrossFitParams,
    *,
    fit: Fitter,
    score: LayerScoring,
    name: str = "cross-fit",
) -> OutOfFold:
    """Each block scored by layers fitted without it (see the module docstring)."""
    if not params.enabled:
        raise ValueError("cross-fitting needs at least 2 blocks")
    block = time_blocks(len(rows), params.blocks)
    index: list[npt.NDArray[np.int64]] = []
    parts: dict[str, list[Floats]] = {}
    trained: list[npt.NDArray[np.int64]] = []
    for k in range(params.blocks):
        held = np.flatnonzero(block == k)
        train = np.flatnonzero(block != k if params.scheme == "blocked" else block < k)
        if len(train) == 0 or len(held) == 0:
            continue  # forward: nothing before the first block
        _check(f"{name} block {k} training", y[train])
        layers = fit(rows[train], y[train])
        for layer, values in score(layers, rows[held]).items():
            parts.setdefault(layer, []).append(np.asarray(values, dtype=np.float64))
        index.append(held)
        trained.append(train)
    if not index:
        raise ValueError("no block was scored")
    return OutOfFold(
        np.concatenate(index),
        {layer: np.concatenate(values) for layer, values in parts.items()},
        tuple(trained),
    )


def stack_out_of_fold(
    final: Mapping[str, Scorer],
    oof: OutOfFold,
    y: Targets,
    *,
    flags: npt.NDArray[np.float64] | None,
    rules: RulesScorer | None,
    params: MetaParams,
) -> EnsembleScorer:
    """The final layers plus a meta model fitted on the out-of-fold scores (``flags``:
    the rule flags of the same rows, ``oof.index`` of the period)."""
    if set(final) != set(oof.scores):
        raise ValueError(f"final layers {sorted(final)} != scored {sorted(oof.scores)}")
    meta_y = y[oof.index]
    _check("cross-fit meta-ensemble", meta_y)
    meta = MetaModel.fit(
        oof.scores,
        meta_y,
        rule_flags=flags,
        params=params,
        layer_versions={name: layer.version for name, layer in final.items()},
    )
    return EnsembleScorer(final, meta, rules)


def cross_fit_ensemble(
    rows: Rows,
    y: Targets,
    params: CrossFitParams,
    *,
    fit: Fitter,
    score: LayerScoring,
    flags: RuleFlags | None,
    rules: RulesScorer | None,
    meta: MetaParams,
) -> tuple[EnsembleScorer, OutOfFold]:
    """Out-of-fold scores, the layers refitted on all of ``rows``, the meta model on top."""
    oof = out_of_fold_scores(rows, y, params, fit=fit, score=score)
    final = fit(rows, y)
    rule_flags = flags(rows[oof.index]) if flags is not None else None
    ensemble = stack_out_of_fold(final, oof, y, flags=rule_flags, rules=rules, params=meta)
    return ensemble, oof


def _check(name: str, y: Targets) -> None:
    positives = int(y.sum())
    if len(y) < 10 or positives == 0 or positives == len(y):
        raise TrainingPeriodError(
            name, len(y), positives, "it needs rows of both kinds; use fewer blocks"
        )
