"""Errors raised by training, evaluation and the model registry.

Like the rest of the tree (``fraudstream/errors.py``), each error keeps what a caller
needs to act on it as attributes: a refused promotion names the metric, both versions
and both values, so a CLI can print it and a dashboard can chart it without parsing.
"""

from __future__ import annotations

from datetime import date

from fraudstream.errors import FraudstreamError


class TrainingError(FraudstreamError):
    """Base of every error raised by the ``training`` package on purpose."""


# --- evaluation ----------------------------------------------------------------------


class MetricUndefinedError(TrainingError):
    """A metric has no value on this data (e.g. AUC ROC on a single class)."""

    def __init__(self, metric: str, reason: str) -> None:
        self.metric = metric
        self.reason = reason
        super().__init__(f"{metric} is undefined: {reason}")


class EmptyWindowError(TrainingError):
    """A protocol window selected no rows, so a fold cannot be trained or assessed."""

    def __init__(self, window: str, start: date, end: date) -> None:
        self.window = window
        self.start = start
        self.end = end
        super().__init__(f"the {window} window [{start}, {end}) holds no transactions")


# --- model registry ------------------------------------------------------------------


class RegistryError(TrainingError):
    """The model registry refused or failed an operation."""


class ModelVersionNotFound(RegistryError):
    def __init__(self, model_name: str, version: int) -> None:
        self.model_name = model_name
        self.version = version
        super().__init__(f"model {model_name!r} has no version {version}")


class PromotionRefused(RegistryError):
    """The candidate is worse than the current champion on ``metric`` beyond tolerance."""

    def __init__(
        self,
        metric: str,
        *,
        champion_version: int,
        champion_value: float,
        candidate_version: int,
        candidate_value: float,
        tolerance: float,
    ) -> None:
        self.metric = metric
        self.champion_version = champion_version
        self.champion_value = champion_value
        self.candidate_version = candidate_version
        self.candidate_value = candidate_value
        self.tolerance = tolerance
        super().__init__(
            f"refusing to promote version {candidate_version}: {metric} "
            f"{candidate_value:.6g} is below champion version {champion_version}'s "
            f"{champion_value:.6g} by more than the tolerance {tolerance:g} "
            f"(pass force=True to override)"
        )


class MetricMissingError(RegistryError):
    """A promotion gate metric was not logged for a version, so it cannot be compared."""

    def __init__(self, version: int, metric: str) -> None:
        self.version = version
        self.metric = metric
        super().__init__(
            f"version {version} has no {metric!r} metric, which the promotion gate needs "
            f"(pass force=True to override)"
        )


class NothingToRollBack(RegistryError):
    """There is no earlier champion in the promotion history to go back to."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        super().__init__(f"model {model_name!r} has no previous champion to roll back to")


class InvalidAlias(RegistryError):
    def __init__(self, alias: str, reason: str) -> None:
        self.alias = alias
        self.reason = reason
        super().__init__(f"alias {alias!r} cannot be used: {reason}")
