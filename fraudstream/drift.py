"""Score drift: the population stability index of recent scores against training.

The trainer stores a :class:`ReferenceHistogram` of the scores the engine gave its
validation period (bin edges and the fraction of scores in each bin); the worker keeps a
sliding window of the most recent scores in the same bins (:class:`ScoreWindow`) and
reports ``psi(reference, window)``. Rules of thumb: below 0.1 stable, 0.1-0.25 moderate
shift, above 0.25 investigate. Pure code, no metrics library.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A bin with no scores would make the index infinite: empty fractions count as this.
EMPTY_BIN_FRACTION = 1e-4


class ReferenceHistogram(BaseModel):
    """``fractions[i]`` of the training scores fell in ``[edges[i], edges[i+1])``.

    Scores outside the edges count in the first or last bin. Invalid histograms raise
    ``pydantic.ValidationError`` naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    edges: tuple[float, ...] = Field(min_length=3)
    fractions: tuple[float, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> ReferenceHistogram:
        if len(self.fractions) != len(self.edges) - 1:
            raise ValueError("fractions must have one value per bin (len(edges) - 1)")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        if any(f < 0 for f in self.fractions) or not math.isclose(
            sum(self.fractions), 1.0, abs_tol=1e-6
        ):
            raise ValueError("fractions must be non-negative and sum to 1")
        return self

    @property
    def bins(self) -> int:
        return len(self.fractions)

    def bin_of(self, score: float) -> int:
        return min(max(bisect_right(self.edges, score) - 1, 0), self.bins - 1)

    @classmethod
    def from_scores(cls, scores: Iterable[float], bins: int = 10) -> ReferenceHistogram:
        """Equal-width bins on [0, 1] (calibrated scores) filled with ``scores``."""
        edges = tuple(i / bins for i in range(bins + 1))
        counts = [0] * bins
        for score in scores:
            counts[min(max(int(score * bins), 0), bins - 1)] += 1
        total = sum(counts)
        if total == 0:
            raise ValueError("a reference histogram needs at least one score")
        return cls(edges=edges, fractions=tuple(c / total for c in counts))


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """The population stability index of two distributions over the same bins:
    ``sum((a - e) * ln(a / e))``, empty bins counted as :data:`EMPTY_BIN_FRACTION`.
    Zero for identical distributions, symmetric, never negative."""
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} expected bins but {len(actual)} actual bins")
    total = 0.0
    for want, got in zip(expected, actual, strict=True):
        e = max(want, EMPTY_BIN_FRACTION)
        a = max(got, EMPTY_BIN_FRACTION)
        total += (a - e) * math.log(a / e)
    return total


class ScoreWindow:
    """The last ``size`` scores, binned like ``reference``, in O(1) per score."""

    def __init__(self, reference: ReferenceHistogram, size: int = 10_000) -> None:
        if size < 1:
            raise ValueError("the window holds at least one score")
        self.reference = reference
        self._bins: deque[int] = deque(maxlen=size)
        self._counts = [0] * reference.bins

    def __len__(self) -> int:
        return len(self._bins)

    def add(self, scores: Iterable[float]) -> None:
        for score in scores:
            if len(self._bins) == self._bins.maxlen:
                self._counts[self._bins[0]] -= 1
            b = self.reference.bin_of(score)
            self._bins.append(b)
            self._counts[b] += 1

    def fractions(self) -> list[float]:
        n = len(self._bins)
        return [c / n for c in self._counts] if n else [0.0] * len(self._counts)

    def psi(self) -> float | None:
        """The index of the window against the reference; None while it is empty."""
        if not self._bins:
            return None
        return psi(self.reference.fractions, self.fractions())
