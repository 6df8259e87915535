"""Shared plumbing of the learned layers: training inputs, imputation, versions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.matrix import FeatureMatrix

TrainingFeatures: TypeAlias = FeatureMatrix | pd.DataFrame
Floats: TypeAlias = npt.NDArray[np.float64]


def training_matrix(data: TrainingFeatures, feature_names: Sequence[str] | None) -> FeatureMatrix:
    """``data`` as a float matrix of ``feature_names`` (all its columns when None)."""
    if isinstance(data, pd.DataFrame):
        names = tuple(feature_names) if feature_names is not None else tuple(map(str, data.columns))
        missing = [n for n in names if n not in data.columns]
        if missing:
            raise ValueError(f"training data lacks features {missing}")
        values = data.loc[:, list(names)].to_numpy(dtype=np.float64, na_value=np.nan)
        return FeatureMatrix(names, np.ascontiguousarray(values))
    if feature_names is None:
        return data
    return data.select(feature_names)


def labels_array(labels: Any, rows: int) -> npt.NDArray[np.float32]:
    y = np.asarray(labels, dtype=np.float32).reshape(-1)
    if y.shape[0] != rows:
        raise ValueError(f"{y.shape[0]} labels for {rows} rows")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return y


@dataclass(frozen=True)
class Imputer:
    """Fills NaN with the training median of each column (0 for an all-missing column)."""

    medians: Floats

    @classmethod
    def fit(cls, values: Floats) -> Imputer:
        finite = np.where(np.isfinite(values), values, np.nan)
        has_any = ~np.isnan(finite).all(axis=0)
        medians = np.zeros(values.shape[1], dtype=np.float64)
        if has_any.any():
            medians[has_any] = np.nanmedian(finite[:, has_any], axis=0)
        return cls(medians)

    def apply(self, values: Floats) -> Floats:
        # Infinities are treated as missing too: a division by a zero count upstream
        # should not push a row to the edge of every tree.
        return np.where(np.isfinite(values), values, self.medians)


@dataclass(frozen=True)
class Standardiser:
    """Imputes, then centres and scales each column; clipped so one wild value cannot
    dominate a neural head."""

    imputer: Imputer
    mean: Floats
    scale: Floats
    clip: float = 8.0

    @classmethod
    def fit(cls, values: Floats) -> Standardiser:
        imputer = Imputer.fit(values)
        filled = imputer.apply(values)
        mean = filled.mean(axis=0) if len(filled) else np.zeros(values.shape[1])
        std = filled.std(axis=0) if len(filled) else np.ones(values.shape[1])
        return cls(imputer, mean, np.where(std > 1e-12, std, 1.0))

    def apply(self, values: Floats) -> npt.NDArray[np.float32]:
        z = (self.imputer.apply(values) - self.mean) / self.scale
        return np.clip(z, -self.clip, self.clip).astype(np.float32)


def content_version(prefix: str, *payloads: bytes) -> str:
    """A version that names the model's content: equal models get equal versions."""
    digest = hashlib.sha256()
    for payload in payloads:
        digest.update(hashlib.sha256(payload).digest())
    return f"{prefix}-{digest.hexdigest()[:12]}"
