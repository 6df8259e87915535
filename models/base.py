"""The one protocol every scoring layer implements, and the batch it scores.

Like River's estimators: each layer (rules, XGBoost, GNN, isolation forest) and the
meta-ensemble expose the same batch method, so the ensemble and the circuit breaker
wrap any of them the same way.

Contract, checked by ``tests/models/test_scorer_contract.py`` for every scorer:
- ``score(batch)`` returns a float64 array of shape ``(len(batch),)`` with values in
  [0, 1]; **higher = more fraud-like**;
- the same batch always gives the same scores;
- missing features (NaN) never raise and never produce NaN scores;
- ``save(dir)`` then ``load(dir)`` gives identical scores, from safe formats only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import Reason, Transaction

Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ScoringBatch:
    """A micro-batch of decoded transactions and their features, row-aligned."""

    transactions: Sequence[Transaction]
    features: FeatureMatrix
    # Set when the feature store could not answer: only transaction-only features exist.
    features_degraded: bool = False
    _columns: dict[str, npt.NDArray[np.object_]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.transactions) != len(self.features):
            raise ValueError(
                f"{len(self.transactions)} transactions but {len(self.features)} feature rows"
            )

    def __len__(self) -> int:
        return len(self.transactions)

    def field(self, name: str) -> npt.NDArray[np.object_]:
        """A transaction field as an object array (None where absent), computed once."""
        cached = self._columns.get(name)
        if cached is None:
            cached = np.array([getattr(t, name) for t in self.transactions], dtype=object)
            self._columns[name] = cached
        return cached


@runtime_checkable
class Scorer(Protocol):
    """A scoring layer. Higher scores mean more fraud-like."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def score(self, batch: ScoringBatch) -> Scores: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Self: ...


@runtime_checkable
class Explainer(Protocol):
    """A layer that can say why, per row, in words an analyst understands."""

    def explain(self, batch: ScoringBatch, scores: Scores, top: int = 3) -> list[list[Reason]]: ...
