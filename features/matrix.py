"""The feature matrix that flows from the feature store to every scorer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class FeatureMatrix:
    """``values[i, j]`` is feature ``names[j]`` of row ``i``; NaN means missing.

    Rows are in the order of the transactions they were computed for.
    """

    names: tuple[str, ...]
    values: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise ValueError(
                f"values shape {self.values.shape} does not match {len(self.names)} names"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature names must be unique")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def column(self, name: str) -> npt.NDArray[np.float64]:
        return self.values[:, self.names.index(name)]

    def select(self, names: Sequence[str]) -> FeatureMatrix:
        """The columns ``names`` in that order; a name this matrix lacks becomes NaN.

        Models call this with the names they were trained on, so a feature the store
        could not compute (a down store, a field absent from the message) reaches the
        model as missing rather than shifting the other columns.
        """
        index = {n: i for i, n in enumerate(self.names)}
        out = np.full((len(self), len(names)), np.nan, dtype=np.float64)
        for j, name in enumerate(names):
            i = index.get(name)
            if i is not None:
                out[:, j] = self.values[:, i]
        return FeatureMatrix(tuple(names), out)

    @classmethod
    def empty(cls, names: Sequence[str], rows: int) -> FeatureMatrix:
        return cls(tuple(names), np.full((rows, len(names)), np.nan, dtype=np.float64))
