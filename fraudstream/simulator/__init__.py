"""Seeded, reproducible payment traffic with labelled attacks, delayed labels and clearing.

    from fraudstream.simulator import SimulatorConfig, generate, to_json_lines
    data = generate(SimulatorConfig(seed=7, n_cards=2000, days=10))

``data.transactions`` (sorted by ``event_time``): transaction_id, event_time
(datetime64[ns, UTC]), card_id, terminal_id, merchant_id, amount (2 decimals), currency
(the merchant's), device_id, ip, country, mcc, latitude, longitude, channel
(pos|ecom|moto|atm|contactless), is_fraud (int8), attack (none|card_testing|
account_takeover|fraud_ring|compromised_terminal|high_amount).

Where a payment comes from: card present (pos, contactless, atm), the terminal's
position and country and, as device, the terminal's fingerprint (``tfp_...``) or the
phone for wallet payments; e-commerce, the payer's position and country as geolocated
from their IP, their device (``dev_...``) and IP; mail/phone order, the merchant's
position, no device and no IP.

``data.labels``: delayed truth (chargebacks, investigator verdicts) for every fraud and
for a sample of genuine payments. ``data.settlements`` / ``data.injected_discrepancies``:
clearing records and the discrepancies injected into them (see
:mod:`fraudstream.simulator.clearing`). ``data.episodes``: which burst, ring or takeover
each fraudulent row belongs to.
"""

from fraudstream.simulator.clearing import expected_discrepancies, settled_while_declined
from fraudstream.simulator.config import (
    ATTACKS,
    AttackMix,
    AttackShape,
    ClearingConfig,
    LabelConfig,
    SimulatorConfig,
)
from fraudstream.simulator.encode import to_json_lines, to_transactions
from fraudstream.simulator.generate import TRANSACTION_COLUMNS, SimulatedData, generate

__all__ = [
    "ATTACKS",
    "TRANSACTION_COLUMNS",
    "AttackMix",
    "AttackShape",
    "ClearingConfig",
    "LabelConfig",
    "SimulatedData",
    "SimulatorConfig",
    "expected_discrepancies",
    "generate",
    "settled_while_declined",
    "to_json_lines",
    "to_transactions",
]
