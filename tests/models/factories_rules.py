"""Factories for the rule, breaker, ensemble and decision tests.

``FACTORIES`` maps a scorer name to a callable taking a scratch directory and returning
a ready scorer (the rule layer and the meta-ensemble), like ``tests/models/factories.py``
does for the learned layers; the scorer contract suite runs against both. The rest are
factories for transactions, batches, rule files and Hypothesis strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import SCHEMA_VERSION, Transaction
from models.base import Scorer, ScoringBatch
from models.ensemble import EnsembleScorer, MetaParams
from models.rules import RulesScorer, parse_rules
from tests.models.factories import (
    CONTRACT_FEATURES,
    START,
    batch_from_world,
    fit_iforest,
    fit_xgboost,
    synthetic_world,
)

# Rules over the synthetic world's features and fields: every action is represented.
CONTRACT_RULES = """
[[rule]]
id = "risky_terminal"
when = "terminal_fraud_rate_7d > 0.25"
action = "decline"
reason = "RISKY_TERMINAL"
description = "Terminal with a high recent fraud rate"

[[rule]]
id = "amount_spike"
when = "amount_to_card_mean_30d >= 4"
action = "review"
reason = "AMOUNT_SPIKE"
description = "Amount far above the card's usual"

[[rule]]
id = "shared_device"
when = "device_card_count_7d >= 3"
action = "adjust"
adjust = 0.3
reason = "SHARED_DEVICE"
description = "Device used by several cards"

[[rule]]
id = "night_large"
when = "is_night = 1 AND amount > 60"
action = "adjust"
adjust = 0.2
reason = "NIGHT_LARGE"
description = "Large amount at night"

[[rule]]
id = "trusted_card"
when = "card_id IN ('card_0150', 'card_0151')"
action = "allow"
reason = "TRUSTED_CARD"
description = "Card known to the issuer as trusted"
"""


def contract_rules() -> RulesScorer:
    return RulesScorer(parse_rules(CONTRACT_RULES, "<contract rules>", CONTRACT_FEATURES))


def fit_rules(_: Path) -> Scorer:
    return contract_rules()


def fit_ensemble(scratch: Path) -> Scorer:
    layers = {"xgboost": fit_xgboost(scratch), "iforest": fit_iforest(scratch)}
    # The meta model learns on a period after the layers' training worlds.
    later = synthetic_world(4000, seed=21, days=10.0, start=START + timedelta(days=20))
    return EnsembleScorer.fit(
        layers,
        batch_from_world(later),
        later.labels,
        rules=contract_rules(),
        params=MetaParams(calibration_fraction=0.4),
    )


FACTORIES: dict[str, Callable[[Path], Scorer]] = {
    "rules": fit_rules,
    "ensemble": fit_ensemble,
}


# --- transactions, batches and rule files --------------------------------------------

RULE_FEATURES = ("amount_ratio_30d", "device_card_count_7d")
CARDS = ("card_a", "card_b", "card_c", "card_d")


def make_tx(index: int = 0, **overrides: Any) -> Transaction:
    fields: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "transaction_id": f"tx-{index}",
        "event_time": datetime(2026, 3, 2, 12, 0, tzinfo=UTC) + timedelta(minutes=index),
        "card_id": CARDS[index % len(CARDS)],
        "terminal_id": f"term_{index % 3}",
        "amount": 50.0,
        "currency": "EUR",
        "merchant_id": "m_1",
        "device_id": f"dev_{index % 2}",
        "ip": "10.0.0.1",
        "country": "FR",
        "mcc": "5411",
        "channel": "pos",
    }
    fields.update(overrides)
    return Transaction(**fields)


def rule_batch(
    transactions: Sequence[Transaction],
    features: Sequence[Sequence[float]] | None = None,
    names: Sequence[str] = RULE_FEATURES,
) -> ScoringBatch:
    values = (
        np.full((len(transactions), len(names)), np.nan)
        if features is None
        else np.asarray(features, dtype=np.float64).reshape(len(transactions), len(names))
    )
    return ScoringBatch(list(transactions), FeatureMatrix(tuple(names), values))


def rule_toml(
    rule_id: str, when: str, action: str = "review", *, adjust: float | None = None, **extra: Any
) -> str:
    lines = [
        "[[rule]]",
        f'id = "{rule_id}"',
        f"when = {_toml_string(when)}",
        f'action = "{action}"',
        f'reason = "{rule_id.upper()}"',
        f'description = "rule {rule_id}"',
    ]
    if adjust is not None:
        lines.append(f"adjust = {adjust}")
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n\n"


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --- Hypothesis strategies ------------------------------------------------------------

_offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-7))]
)


@st.composite
def transactions(draw: st.DrawFn, index: int = 0) -> Transaction:
    when = draw(
        st.datetimes(
            min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=_offsets
        )
    )
    return make_tx(
        index,
        event_time=when,
        card_id=draw(st.sampled_from(CARDS)),
        amount=draw(st.sampled_from([0.0, 99.99, 100.0, 150.0, 200.0, 500.0, 500.01, 2500.0])),
        country=draw(st.none() | st.sampled_from(["FR", "NG", "RU", "DE"])),
        mcc=draw(st.none() | st.sampled_from(["5411", "7995", "4829"])),
        channel=draw(st.none() | st.sampled_from(["pos", "ecom", "atm", "moto"])),
        device_id=draw(st.none() | st.sampled_from(["dev_0", "dev_1"])),
    )


feature_values = st.one_of(
    st.just(float("nan")),
    st.sampled_from([0.0, 2.0, 3.0, 4.99, 5.0, 12.0, float("inf")]),
)


@st.composite
def batches(draw: st.DrawFn, max_rows: int = 12) -> ScoringBatch:
    rows = draw(st.integers(0, max_rows))
    txs = [draw(transactions(i)) for i in range(rows)]
    feats = [[draw(feature_values) for _ in RULE_FEATURES] for _ in range(rows)]
    return rule_batch(txs, feats if rows else None)
