"""Reason codes merged across layers, in the order an analyst should read them.

Per row: first the rules that fired (decline, allow, review, then adjustments: they
are the explicit policy); then each learned layer that pushed the row towards fraud,
largest push first, where a layer's push is its term in the meta model's logit. A
layer that can explain itself (the :class:`~models.base.Explainer` protocol, e.g.
XGBoost's SHAP reasons such as "amount 5.1× the card's mean over the last 30 days")
gives its own reasons; the graph and anomaly layers give one fixed phrase when their
score is high. Codes are de-duplicated and the list is capped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import Reason
from models.base import Explainer, Scorer, Scores, ScoringBatch
from models.rules import RuleEvaluation
from models.rules.evaluate import LAYER as RULES

if TYPE_CHECKING:  # the ensemble imports this module; only the type is needed here
    from models.ensemble.stacking import Stacked


class ReasonSettings(BaseModel):
    """Proposed ``[reasons]`` settings section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_reasons: int = Field(default=5, ge=1, le=20)
    # Reasons asked of each explaining layer per row (SHAP costs ~100x a prediction,
    # so only rows routed to review or decline are explained).
    explain_top: int = Field(default=3, ge=1, le=10)
    # A layer without its own explanations is named only when its score is this high.
    phrase_min_score: dict[str, float] = Field(
        default_factory=lambda: {"gnn": 0.5, "iforest": 0.95}
    )


# Layers that cannot explain a row themselves: what a high score means, in words.
LAYER_PHRASES: dict[str, tuple[str, str]] = {
    "gnn": ("GNN_LINKED_FRAUD", "linked to devices/terminals with recent fraud"),
    "iforest": ("ANOMALY_UNUSUAL", "unusual for this card"),
}


def sub_batch(batch: ScoringBatch, rows: npt.NDArray[np.int64]) -> ScoringBatch:
    values = batch.features.values[rows]
    return ScoringBatch(
        [batch.transactions[i] for i in rows],
        FeatureMatrix(batch.features.names, values),
        batch.features_degraded,
    )


def layer_explanations(
    batch: ScoringBatch,
    rows: npt.NDArray[np.int64],
    *,
    layers: Mapping[str, Scorer],
    layer_scores: Mapping[str, Scores],
    stacked: Stacked,
    top: int,
    on_error: Any = None,
) -> dict[str, dict[int, list[Reason]]]:
    """Reasons from each explaining layer, for the ``rows`` where it pushed towards fraud."""
    out: dict[str, dict[int, list[Reason]]] = {}
    for name, layer in layers.items():
        if not isinstance(layer, Explainer) or name not in layer_scores:
            continue
        pushed = rows[(stacked.contributions[name][rows] > 0) & stacked.used[name][rows]]
        if len(pushed) == 0:
            continue
        try:
            reasons = layer.explain(sub_batch(batch, pushed), layer_scores[name][pushed], top)
        except Exception as exc:  # reasons are best effort; the decision stands without them
            if on_error is not None:
                on_error(name, exc)
            continue
        out[name] = dict(zip(pushed.tolist(), reasons, strict=True))
    return out


def merge_reasons(
    row: int,
    *,
    rules: RuleEvaluation | None,
    stacked: Stacked | None,
    layer_scores: Mapping[str, Scores],
    explanations: Mapping[str, Mapping[int, list[Reason]]],
    settings: ReasonSettings,
    extra: Sequence[Reason] = (),
) -> list[Reason]:
    """The reasons of one row, most decisive first, de-duplicated and capped."""
    ordered: list[Reason] = list(extra)
    if rules is not None and len(rules):
        ordered += rules.reasons(row)
    if stacked is not None:
        pushes = [
            (float(stacked.contributions[name][row]), name)
            for name in stacked.contributions
            if name != RULES and stacked.used[name][row] and stacked.contributions[name][row] > 0
        ]
        for _, name in sorted(pushes, key=lambda p: (-p[0], p[1])):
            ordered += _layer_reasons(name, row, layer_scores, explanations, settings)
    seen: set[str] = set()
    merged: list[Reason] = []
    for reason in ordered:
        if reason.code not in seen:
            seen.add(reason.code)
            merged.append(reason)
    return merged[: settings.max_reasons]


def _layer_reasons(
    name: str,
    row: int,
    layer_scores: Mapping[str, Scores],
    explanations: Mapping[str, Mapping[int, list[Reason]]],
    settings: ReasonSettings,
) -> list[Reason]:
    own = explanations.get(name, {}).get(row)
    if own:
        return list(own)
    phrase = LAYER_PHRASES.get(name)
    scores = layer_scores.get(name)
    if phrase is None or scores is None:
        return []
    if scores[row] < settings.phrase_min_score.get(name, 0.5):
        return []
    return [Reason(code=phrase[0], text=phrase[1], layer=name)]
