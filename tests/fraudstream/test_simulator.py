from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudstream.simulator import (
    ATTACKS,
    TRANSACTION_COLUMNS,
    AttackMix,
    SimulatedData,
    SimulatorConfig,
    generate,
    to_json_lines,
    to_transactions,
)
from fraudstream.simulator.geography import haversine_km
from fraudstream.simulator.tokens import tokens
from fraudstream.wire import transaction_decoder

MAX_BYTES = 64 * 1024


def make_config(**overrides: Any) -> SimulatorConfig:
    base: dict[str, Any] = {"seed": 11, "n_cards": 2000, "n_terminals": 600, "days": 10}
    base.update(overrides)
    return SimulatorConfig(**base)


@functools.cache
def simulated(cfg: SimulatorConfig) -> SimulatedData:
    """Generation is deterministic, so tests reading the same config share one run."""
    return generate(cfg)


@pytest.fixture
def data() -> SimulatedData:
    return simulated(make_config())


def rows_of(data: SimulatedData, attack: str) -> pd.DataFrame:
    tx = data.transactions
    return tx[tx["attack"] == attack].merge(data.episodes, on=["transaction_id", "attack"])


def genuine(data: SimulatedData) -> pd.DataFrame:
    tx = data.transactions
    return tx[tx["attack"] == "none"]


def frames(data: SimulatedData) -> list[pd.DataFrame]:
    return [
        data.transactions,
        data.labels,
        data.settlements,
        data.injected_discrepancies,
        data.episodes,
    ]


# --- reproducibility --------------------------------------------------------------------


def test_same_config_gives_byte_identical_output() -> None:
    cfg = make_config(n_cards=300, days=4, fraud_rate=0.05)
    first, second = generate(cfg), generate(cfg)
    for a, b in zip(frames(first), frames(second), strict=True):
        pd.testing.assert_frame_equal(a, b)
        assert a.to_csv(index=False).encode() == b.to_csv(index=False).encode()
    assert to_json_lines(first.transactions) == to_json_lines(second.transactions)


def test_different_seeds_give_different_traffic() -> None:
    a = generate(make_config(n_cards=300, days=4, seed=1)).transactions
    b = generate(make_config(n_cards=300, days=4, seed=2)).transactions
    assert set(a["card_id"]) != set(b["card_id"])
    assert not np.array_equal(a["amount"].to_numpy()[:100], b["amount"].to_numpy()[:100])


def test_changing_one_attack_leaves_genuine_population_alone() -> None:
    base = generate(make_config(n_cards=300, days=4, fraud_rate=0.05))
    other = generate(
        make_config(n_cards=300, days=4, fraud_rate=0.05, attack_mix=AttackMix(card_testing=0))
    )
    assert "card_testing" not in set(other.transactions["attack"])

    def cardholders_own(tx: pd.DataFrame) -> pd.DataFrame:
        # Compromised terminals relabel cardholders' own payments; all other attacks add rows.
        own = tx[tx["attack"].isin(["none", "compromised_terminal"])]
        return own[["event_time", "card_id", "terminal_id", "amount", "device_id", "ip"]]

    pd.testing.assert_frame_equal(
        cardholders_own(base.transactions).reset_index(drop=True),
        cardholders_own(other.transactions).reset_index(drop=True),
    )


# --- the frame contract -----------------------------------------------------------------


def test_transactions_follow_the_column_contract(data: SimulatedData) -> None:
    tx = data.transactions
    assert tuple(tx.columns) == TRANSACTION_COLUMNS
    assert str(tx["event_time"].dtype) == "datetime64[ns, UTC]"
    assert tx["amount"].dtype == np.float64
    assert tx["is_fraud"].dtype == np.int8
    assert tx["transaction_id"].is_unique
    assert tx["event_time"].is_monotonic_increasing
    assert np.allclose(tx["amount"], tx["amount"].round(2))
    assert (tx["amount"] > 0).all()
    assert set(tx["channel"]) <= {"pos", "ecom", "moto", "atm", "contactless"}
    assert set(tx["attack"]) <= set(ATTACKS)
    assert (tx["is_fraud"] == (tx["attack"] != "none")).all()
    assert tx["mcc"].str.fullmatch(r"[0-9]{4}").all()
    assert tx["currency"].str.fullmatch(r"[A-Z]{3}").all()
    assert tx["country"].str.fullmatch(r"[A-Z]{2}").all()
    assert tx["latitude"].between(-90, 90).all() and tx["longitude"].between(-180, 180).all()
    start = pd.Timestamp(data.config.start, tz="UTC")
    assert tx["event_time"].min() >= start
    assert tx["event_time"].max() < start + pd.Timedelta(days=data.config.days)


def test_optional_fields_follow_the_channel(data: SimulatedData) -> None:
    tx = data.transactions
    ecom = tx[tx["channel"] == "ecom"]
    assert ecom["ip"].notna().all() and ecom["device_id"].notna().all()
    present = tx[tx["channel"].isin(["pos", "contactless", "atm"])]
    assert present["ip"].isna().all() and present["device_id"].notna().all()
    moto = tx[tx["channel"] == "moto"]
    assert len(moto) > 0 and moto["device_id"].isna().all() and moto["ip"].isna().all()


def test_cards_shop_mostly_near_home(data: SimulatedData) -> None:
    present = genuine(data)
    present = present[present["channel"].isin(["pos", "contactless"])]
    home = present.groupby("card_id")[["latitude", "longitude"]].transform("median")
    km = haversine_km(
        present["latitude"].to_numpy(),
        present["longitude"].to_numpy(),
        home["latitude"].to_numpy(),
        home["longitude"].to_numpy(),
    )
    assert np.median(km) < 30
    # ...but not always: honest travel exists, so distance alone is no proof of fraud.
    assert (km > 500).mean() > 0.001


def test_fraud_rate_is_near_the_configured_one() -> None:
    for rate in (0.01, 0.03):
        tx = simulated(make_config(fraud_rate=rate)).transactions
        assert tx["is_fraud"].mean() == pytest.approx(rate, rel=0.2)


def test_attack_weight_zero_switches_an_attack_off() -> None:
    mix = AttackMix(card_testing=0, fraud_ring=0, high_amount=0)
    tx = simulated(make_config(n_cards=600, attack_mix=mix, fraud_rate=0.02)).transactions
    assert set(tx["attack"]) == {"none", "account_takeover", "compromised_terminal"}


# --- attack signatures ------------------------------------------------------------------


def test_every_attack_is_present(data: SimulatedData) -> None:
    assert set(data.transactions["attack"]) == set(ATTACKS)
    assert set(data.episodes["attack"]) == set(ATTACKS) - {"none"}
    fraud_ids = data.transactions.loc[data.transactions["is_fraud"] == 1, "transaction_id"]
    assert set(data.episodes["transaction_id"]) == set(fraud_ids)


def test_card_testing_is_tiny_amounts_from_one_bot_across_many_cards(data: SimulatedData) -> None:
    rows = rows_of(data, "card_testing")
    lo, hi = data.config.attacks.card_testing_amount
    assert rows["amount"].between(lo, hi).all()
    assert (rows["channel"] == "ecom").all()
    assert set(rows["mcc"]) <= {"5816", "5999"}
    per_burst = rows.groupby("episode").agg(
        ips=("ip", "nunique"),
        devices=("device_id", "nunique"),
        merchants=("merchant_id", "nunique"),
        cards=("card_id", "nunique"),
        span=("event_time", lambda t: t.max() - t.min()),
    )
    assert (per_burst[["ips", "devices", "merchants"]] == 1).all().all()
    assert (per_burst["cards"] >= 5).all()
    assert (
        per_burst["span"] <= pd.Timedelta(minutes=data.config.attacks.card_testing_burst_minutes[1])
    ).all()


def test_account_takeover_comes_from_a_new_device_far_from_home(data: SimulatedData) -> None:
    rows = rows_of(data, "account_takeover")
    honest = genuine(data)
    present = honest[honest["channel"].isin(["pos", "contactless", "atm"])]
    home = present.groupby("card_id")[["latitude", "longitude"]].median()
    usual_country = honest.groupby("card_id")["country"].agg(lambda s: s.mode().iloc[0])
    rows = rows.join(home, on="card_id", rsuffix="_home").dropna(subset=["latitude_home"])
    assert len(rows) > 20
    km = haversine_km(
        rows["latitude"].to_numpy(),
        rows["longitude"].to_numpy(),
        rows["latitude_home"].to_numpy(),
        rows["longitude_home"].to_numpy(),
    )
    assert (km > 500).all()
    assert (rows["country"] != rows["card_id"].map(usual_country)).all()
    known = set(zip(honest["card_id"], honest["device_id"], strict=True))
    assert not any(pair in known for pair in zip(rows["card_id"], rows["device_id"], strict=True))
    assert rows["amount"].median() > 2 * honest["amount"].median()


def test_fraud_ring_devices_are_each_shared_by_several_cards(data: SimulatedData) -> None:
    rows = rows_of(data, "fraud_ring")
    assert (rows.groupby("device_id")["card_id"].nunique() >= 3).all()
    per_ring = rows.groupby("episode").agg(
        cards=("card_id", "nunique"),
        devices=("device_id", "nunique"),
        ips=("ip", "nunique"),
        merchants=("merchant_id", "nunique"),
    )
    shape = data.config.attacks
    assert (per_ring["cards"] >= 3).all()
    assert (per_ring["devices"] <= shape.ring_devices[1]).all()
    assert (per_ring["ips"] <= shape.ring_ips[1]).all()
    assert (per_ring["merchants"] <= shape.ring_merchants[1]).all()
    # Ring devices never show up in honest traffic.
    assert set(rows["device_id"]).isdisjoint(set(genuine(data)["device_id"].dropna()))


def test_compromised_terminal_turns_most_of_its_window_fraudulent(data: SimulatedData) -> None:
    rows = rows_of(data, "compromised_terminal")
    tx = data.transactions
    start = pd.Timestamp(data.config.start, tz="UTC")
    day = (tx["event_time"] - start).dt.days
    assert rows["episode"].nunique() >= 2
    for _, episode in rows.groupby("episode"):
        assert episode["terminal_id"].nunique() == 1
        terminal = episode["terminal_id"].iloc[0]
        days = (episode["event_time"] - start).dt.days
        at_terminal = tx[(tx["terminal_id"] == terminal) & day.between(days.min(), days.max())]
        assert (at_terminal["attack"] == "compromised_terminal").mean() >= 0.6
        assert set(at_terminal["channel"]) <= {"pos", "contactless", "atm"}


def test_high_amounts_are_far_above_what_the_card_usually_spends(data: SimulatedData) -> None:
    rows = rows_of(data, "high_amount")
    usual = genuine(data).groupby("card_id")["amount"].median()
    ratio = rows["amount"] / rows["card_id"].map(usual)
    assert ratio.median() > 5
    # Not a hard threshold: some frauds are smaller than some honest purchases.
    assert rows["amount"].min() < genuine(data)["amount"].quantile(0.999)
    assert set(rows["channel"]) == {"pos"}


# --- the wire ---------------------------------------------------------------------------


def test_every_row_decodes_through_the_wire_decoder(data: SimulatedData) -> None:
    lines = to_json_lines(data.transactions)
    batch = transaction_decoder(MAX_BYTES).decode(lines)
    assert not batch.rejected
    assert batch.items == to_transactions(data.transactions)
    assert all(line.count(b"\n") == 0 for line in lines[:1000])
    assert batch.items[0].event_time == data.transactions["event_time"].iloc[0].to_pydatetime()


def test_json_lines_leave_out_missing_fields_and_keep_sub_millisecond_times() -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": ["a-1", "a-2"],
            "event_time": pd.to_datetime(
                ["2025-03-01T12:00:00.123456Z", "2025-03-01T13:00:00.000000Z"], utc=True
            ),
            "card_id": ["c1", "c2"],
            "terminal_id": ["t1", "t2"],
            "amount": [1.5, 20.0],
            "currency": ["EUR", "GBP"],
            "device_id": [None, "d2"],
            "latitude": [np.nan, 48.8],
        }
    )
    lines = to_json_lines(frame)
    assert b"device_id" not in lines[0] and b"latitude" not in lines[0]
    decoded = transaction_decoder(MAX_BYTES).decode(lines)
    assert not decoded.rejected
    assert decoded.items[0].event_time.microsecond == 123456
    assert decoded.items[1].device_id == "d2" and decoded.items[1].latitude == 48.8
    assert to_json_lines(frame.iloc[:0]) == []


def test_tokens_are_distinct_and_do_not_reveal_order() -> None:
    ids = tokens("dev_", 200_000, key=12345).to_pylist()
    assert len(set(ids)) == len(ids)
    assert ids != sorted(ids)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    cards=st.integers(10, 120),
    days=st.integers(1, 4),
    fraud_rate=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_any_small_simulation_is_consistent_and_decodes(
    seed: int, cards: int, days: int, fraud_rate: float
) -> None:
    data = generate(
        SimulatorConfig(seed=seed, n_cards=cards, n_terminals=40, days=days, fraud_rate=fraud_rate)
    )
    tx = data.transactions
    assert tx["event_time"].is_monotonic_increasing and tx["transaction_id"].is_unique
    assert not transaction_decoder(MAX_BYTES).decode(to_json_lines(tx)).rejected
    fraud = tx.loc[tx["is_fraud"] == 1, "transaction_id"]
    assert set(data.labels.loc[data.labels["is_fraud"] == 1, "transaction_id"]) == set(fraud)
    assert set(data.settlements["transaction_id"]) - set(tx["transaction_id"]) == set(
        data.injected_discrepancies.loc[
            data.injected_discrepancies["kind"] == "unknown_authorization", "transaction_id"
        ]
    )
