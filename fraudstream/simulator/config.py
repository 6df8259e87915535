"""What the simulator is asked to produce: one frozen, validated configuration.

Rates are shares of transactions unless said otherwise. Attacks are given as a total
fraud rate and a mix of weights, so that switching one attack off (weight 0) keeps the
overall fraud rate where it was asked to be.

Attacks come in whole episodes (a burst, a ring, a takeover), as many as come closest to
the asked number of rows, so a small simulation meets its rate only roughly and may
leave out an attack whose share is under half an episode.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, model_validator

ATTACKS: tuple[str, ...] = (
    "none",
    "card_testing",
    "account_takeover",
    "fraud_ring",
    "compromised_terminal",
    "high_amount",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AttackMix(_Frozen):
    """Relative weight of each attack in the fraudulent rows (normalised, 0 switches off)."""

    card_testing: float = Field(default=0.2, ge=0)
    account_takeover: float = Field(default=0.2, ge=0)
    fraud_ring: float = Field(default=0.2, ge=0)
    compromised_terminal: float = Field(default=0.2, ge=0)
    high_amount: float = Field(default=0.2, ge=0)

    def shares(self) -> dict[str, float]:
        weights = {name: float(getattr(self, name)) for name in ATTACKS[1:]}
        total = sum(weights.values())
        if total == 0:
            return dict.fromkeys(weights, 0.0)
        return {name: w / total for name, w in weights.items()}


class AttackShape(_Frozen):
    """How each attack looks; bounds are inclusive."""

    card_testing_burst_rows: tuple[int, int] = (8, 40)
    card_testing_burst_minutes: tuple[float, float] = (2.0, 15.0)
    card_testing_amount: tuple[float, float] = (0.5, 3.0)
    takeover_rows: tuple[int, int] = (2, 8)
    takeover_hours: tuple[float, float] = (0.5, 6.0)
    # Share of takeovers coming from another continent (the rest: another home-region country).
    takeover_far_share: float = Field(default=0.75, ge=0, le=1)
    ring_cards: tuple[int, int] = (4, 10)
    ring_devices: tuple[int, int] = (2, 3)
    ring_ips: tuple[int, int] = (2, 3)
    ring_merchants: tuple[int, int] = (2, 4)
    ring_days: tuple[int, int] = (2, 5)
    compromised_days: tuple[int, int] = (2, 7)
    # "Every (or most)": the share of a compromised terminal's transactions in its window.
    compromised_fraud_share: float = Field(default=0.9, gt=0, le=1)
    high_amount_rows: tuple[int, int] = (1, 4)
    # Median of (fraudulent amount / what the card usually spends at that kind of shop).
    high_amount_median_ratio: float = Field(default=6.0, gt=1)

    @model_validator(mode="after")
    def _ordered_bounds(self) -> AttackShape:
        for name, value in self:
            if isinstance(value, tuple) and not 0 <= value[0] <= value[1]:
                raise ValueError(f"{name}: expected 0 <= low <= high, got {value}")
        return self


class LabelConfig(_Frozen):
    """When the truth arrives: chargebacks weeks later, investigator verdicts sooner."""

    chargeback_share: float = Field(default=0.7, ge=0, le=1)
    chargeback_delay_days: tuple[float, float] = (5.0, 60.0)
    investigator_delay_hours: tuple[float, float] = (1.0, 72.0)
    # Genuine transactions that an investigator looked at and cleared.
    genuine_label_rate: float = Field(default=0.02, ge=0, le=1)


class ClearingConfig(_Frozen):
    """How authorisations settle, and which discrepancies are injected (ground truth)."""

    settle_delay_days: tuple[float, float] = (1.0, 3.0)
    partial_capture_rate: float = Field(default=0.15, ge=0, le=1)  # of e-commerce retail
    tip_rate: float = Field(default=0.5, ge=0, le=1)  # of card-present restaurant payments
    max_tip_share: float = Field(default=0.25, ge=0, le=1)
    refund_rate: float = Field(default=0.01, ge=0, le=1)
    missing_rate: float = Field(default=0.002, ge=0, le=0.1)
    amount_mismatch_rate: float = Field(default=0.002, ge=0, le=0.1)
    currency_mismatch_rate: float = Field(default=0.001, ge=0, le=0.1)
    duplicate_rate: float = Field(default=0.002, ge=0, le=0.1)
    unknown_authorization_rate: float = Field(default=0.001, ge=0, le=0.1)


class SimulatorConfig(_Frozen):
    """Everything :func:`fraudstream.simulator.generate` needs; same config, same bytes."""

    seed: int = Field(default=0, ge=0)
    n_cards: int = Field(default=2000, ge=10)
    n_terminals: int = Field(default=800, ge=40)
    days: int = Field(default=10, ge=1, le=3650)
    start: date = date(2025, 1, 1)
    mean_tx_per_card_day: float = Field(default=2.0, gt=0, le=200)
    fraud_rate: float = Field(default=0.01, ge=0, lt=0.5)
    attack_mix: AttackMix = AttackMix()
    attacks: AttackShape = AttackShape()
    labels: LabelConfig = LabelConfig()
    clearing: ClearingConfig = ClearingConfig()
    # Genuine behaviour that looks like fraud, so no single signal gives attacks away.
    travel_rate: float = Field(default=0.01, ge=0, le=1)  # card-days spent in another city
    far_travel_share: float = Field(default=0.15, ge=0, le=1)  # of travel days, abroad
    new_device_rate: float = Field(default=0.01, ge=0, le=1)  # e-commerce from a new device
    mobile_ip_rate: float = Field(default=0.2, ge=0, le=1)  # e-commerce from a fresh IP
    shared_household_rate: float = Field(default=0.1, ge=0, le=1)  # cards sharing a device

    def attack_rate(self, attack: str) -> float:
        """Share of all transactions that ``attack`` should make up."""
        return self.fraud_rate * self.attack_mix.shares()[attack]
