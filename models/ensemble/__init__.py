"""The meta-ensemble: :class:`MetaModel` (the pure, calibrated stacker with a fallback for
every subset of missing layers) and :class:`EnsembleScorer` (layers + meta model behind
the Scorer protocol)."""

from models.ensemble.scorer import LAYER_CLASSES, EnsembleScorer
from models.ensemble.stacking import RULES, Calibration, MetaModel, MetaParams, Stacked, Stacker

__all__ = [
    "LAYER_CLASSES",
    "RULES",
    "Calibration",
    "EnsembleScorer",
    "MetaModel",
    "MetaParams",
    "Stacked",
    "Stacker",
]
