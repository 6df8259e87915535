"""Reconciliation settings: one small frozen model, validated at start-up.

The keys belong under ``[reconciliation]`` in ``config/fraudstream.toml``. Every
duration is event time (the reconciler never reads a clock).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReconcileConfig(BaseModel):
    """How strict matching is, and how long the reconciler waits and remembers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A capture may differ from the authorised amount by this much (major units).
    amount_tolerance: float = Field(default=0.01, ge=0, le=100)
    # A tip-adjusted settlement may exceed the authorisation by this share (the
    # simulator's ClearingConfig.max_tip_share).
    max_tip_share: float = Field(default=0.25, ge=0, le=1)
    # An approved authorisation with no capture this long after the payment is
    # reported as authorization_not_settled.
    settle_window_hours: float = Field(default=7 * 24, gt=0)
    # A settlement waits this long for its authorisation before it is reported as
    # settlement_without_authorization (it still matches if the authorisation comes later).
    orphan_grace_hours: float = Field(default=24, gt=0)
    # A closed payment is forgotten this long after the last event that touched it, so
    # memory stays bounded; a refund arriving later is treated as a new, unknown one.
    retention_days: float = Field(default=45, gt=0)

    @model_validator(mode="after")
    def _retention_outlives_the_windows(self) -> ReconcileConfig:
        retention = self.retention_days * 24
        if retention <= max(self.settle_window_hours, self.orphan_grace_hours):
            raise ValueError(
                "retention_days must be longer than settle_window_hours and orphan_grace_hours"
            )
        return self

    @property
    def tolerance_cents(self) -> int:
        return round(self.amount_tolerance * 100)

    @property
    def settle_window_ms(self) -> int:
        return _ms(timedelta(hours=self.settle_window_hours))

    @property
    def orphan_grace_ms(self) -> int:
        return _ms(timedelta(hours=self.orphan_grace_hours))

    @property
    def retention_ms(self) -> int:
        return _ms(timedelta(days=self.retention_days))


def _ms(delta: timedelta) -> int:
    return delta // timedelta(milliseconds=1)
