"""Delayed labels, settlements with injected discrepancies, and the ``simulate`` command."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fraudstream.simulator import (
    ATTACKS,
    SimulatedData,
    SimulatorConfig,
    expected_discrepancies,
    generate,
    settled_while_declined,
)
from fraudstream.simulator.cli import companion_path, register
from fraudstream.wire import transaction_decoder

TIP_ALLOWANCE = 0.25


def make_config(**overrides: Any) -> SimulatorConfig:
    base: dict[str, Any] = {"seed": 5, "n_cards": 1500, "n_terminals": 500, "days": 8}
    base.update(overrides)
    return SimulatorConfig(**base)


@functools.cache
def simulated(cfg: SimulatorConfig) -> SimulatedData:
    return generate(cfg)


@pytest.fixture
def data() -> SimulatedData:
    return simulated(make_config())


def with_authorisation(data: SimulatedData, settlements: pd.DataFrame) -> pd.DataFrame:
    auth = data.transactions[
        ["transaction_id", "amount", "currency", "mcc", "channel", "event_time"]
    ].rename(columns=lambda c: c if c == "transaction_id" else f"auth_{c}")
    return settlements.merge(auth, on="transaction_id", how="inner")


def reconcile(data: SimulatedData) -> set[tuple[str, str, str | None]]:
    """An independent reconciliation: what a correct matcher would report."""
    tx, settlements = data.transactions, data.settlements
    known = set(tx["transaction_id"])
    found: set[tuple[str, str, str | None]] = set()
    unknown = settlements[~settlements["transaction_id"].isin(known)]
    found |= {
        ("unknown_authorization", t, s)
        for t, s in zip(unknown["transaction_id"], unknown["settlement_id"], strict=True)
    }

    charges = settlements[
        settlements["transaction_id"].isin(known) & (settlements["kind"] != "refund")
    ]
    found |= {("missing_settlement", t, None) for t in known - set(charges["transaction_id"])}

    captures = charges[charges["kind"] == "capture"].sort_values(["settled_at", "settlement_id"])
    repeated = captures.duplicated(["transaction_id", "amount", "currency"], keep="first")
    found |= {
        ("duplicate_settlement", t, s)
        for t, s in zip(
            captures.loc[repeated, "transaction_id"],
            captures.loc[repeated, "settlement_id"],
            strict=True,
        )
    }

    rest = with_authorisation(data, charges.drop(captures.index[repeated]))
    other_currency = rest[rest["currency"] != rest["auth_currency"]]
    found |= {
        ("currency_mismatch", t, s)
        for t, s in zip(
            other_currency["transaction_id"], other_currency["settlement_id"], strict=True
        )
    }

    rest["restaurant"] = rest["auth_mcc"] == "5812"
    per_tx = rest.groupby("transaction_id").agg(
        settled=("amount", "sum"),
        auth=("auth_amount", "first"),
        tip_allowed=("restaurant", "min"),
        parts=("settlement_id", "count"),
        settlement_id=("settlement_id", "first"),
    )
    exact = (per_tx["settled"] - per_tx["auth"]).abs() < 0.005
    tipped = per_tx["tip_allowed"] & per_tx["settled"].between(
        per_tx["auth"], per_tx["auth"] * (1 + TIP_ALLOWANCE) + 0.01
    )
    wrong = per_tx[~(exact | tipped)]
    assert (wrong["parts"] == 1).all()
    found |= {
        ("amount_mismatch", t, s) for t, s in zip(wrong.index, wrong["settlement_id"], strict=True)
    }
    return found


def truth(frame: pd.DataFrame) -> set[tuple[str, str, str | None]]:
    ids = frame["settlement_id"].astype(object).where(frame["settlement_id"].notna(), None)
    return set(zip(frame["kind"], frame["transaction_id"], ids, strict=True))


# --- labels -----------------------------------------------------------------------------


def test_every_fraud_gets_exactly_one_fraud_label(data: SimulatedData) -> None:
    labels, tx = data.labels, data.transactions
    assert labels["transaction_id"].is_unique
    fraud = set(tx.loc[tx["is_fraud"] == 1, "transaction_id"])
    assert set(labels.loc[labels["is_fraud"] == 1, "transaction_id"]) == fraud
    joined = labels.merge(tx, on="transaction_id", suffixes=("", "_tx"))
    assert (joined["is_fraud"] == joined["is_fraud_tx"]).all()
    for column in ("card_id", "terminal_id", "event_time"):
        assert (joined[column] == joined[f"{column}_tx"]).all()


def test_a_sample_of_genuine_payments_is_cleared_by_investigators(data: SimulatedData) -> None:
    labels = data.labels
    cleared = labels[labels["is_fraud"] == 0]
    assert (cleared["source"] == "investigator").all()
    genuine = int((data.transactions["is_fraud"] == 0).sum())
    assert len(cleared) / genuine == pytest.approx(data.config.labels.genuine_label_rate, rel=0.2)


def test_labels_arrive_later_chargebacks_much_later(data: SimulatedData) -> None:
    labels, cfg = data.labels, data.config.labels
    assert labels["label_time"].is_monotonic_increasing
    delay = labels["label_time"] - labels["event_time"]
    assert (delay > pd.Timedelta(0)).all()
    chargeback = labels["source"] == "chargeback"
    assert 0 < chargeback.sum() < (labels["is_fraud"] == 1).sum()
    lo, hi = cfg.chargeback_delay_days
    assert delay[chargeback].between(pd.Timedelta(days=lo), pd.Timedelta(days=hi)).all()
    lo_h, hi_h = cfg.investigator_delay_hours
    assert delay[~chargeback].between(pd.Timedelta(hours=lo_h), pd.Timedelta(hours=hi_h)).all()


# --- settlements ------------------------------------------------------------------------


def test_injected_discrepancies_are_exactly_what_a_reconciliation_finds(
    data: SimulatedData,
) -> None:
    expected = truth(data.injected_discrepancies)
    assert {kind for kind, _, _ in expected} == {
        "missing_settlement",
        "amount_mismatch",
        "currency_mismatch",
        "duplicate_settlement",
        "unknown_authorization",
    }
    assert reconcile(data) == expected


def test_settlements_carry_the_injected_flag_of_their_row(data: SimulatedData) -> None:
    flagged = data.settlements[data.settlements["injected"] != "none"]
    injected = data.injected_discrepancies
    with_row = injected[injected["kind"] != "missing_settlement"]
    assert set(zip(flagged["injected"], flagged["settlement_id"], strict=True)) == set(
        zip(with_row["kind"], with_row["settlement_id"], strict=True)
    )


def test_most_payments_settle_once_in_full_a_few_days_later(data: SimulatedData) -> None:
    rows = with_authorisation(data, data.settlements)
    single = rows[rows.groupby("transaction_id")["settlement_id"].transform("size") == 1]
    full = single[
        (single["kind"] == "capture") & np.isclose(single["amount"], single["auth_amount"])
    ]
    assert len(full) / len(data.transactions) > 0.75
    lo, hi = data.config.clearing.settle_delay_days
    delay = full["settled_at"] - full["auth_event_time"]
    assert delay.between(pd.Timedelta(days=lo), pd.Timedelta(days=hi)).mean() > 0.99


def test_partial_captures_sum_to_the_authorised_amount(data: SimulatedData) -> None:
    rows = with_authorisation(data, data.settlements)
    partial = rows[rows["kind"] == "partial_capture"]
    assert len(partial) > 0
    per_tx = partial.groupby("transaction_id").agg(
        parts=("amount", "count"), total=("amount", "sum"), auth=("auth_amount", "first")
    )
    assert per_tx["parts"].between(2, 3).all()
    assert np.allclose(per_tx["total"], per_tx["auth"], atol=0.005)
    assert set(partial["auth_channel"]) <= {"ecom", "moto"}
    assert set(partial["auth_mcc"]) <= {"5999", "5732"}


def test_tips_only_on_restaurants_and_within_the_allowance(data: SimulatedData) -> None:
    rows = with_authorisation(data, data.settlements)
    tips = rows[rows["kind"] == "tip_adjusted"]
    assert len(tips) > 0
    assert set(tips["auth_mcc"]) == {"5812"}
    assert set(tips["auth_channel"]) <= {"pos", "contactless"}
    assert (tips["amount"] > tips["auth_amount"]).all()
    assert (tips["amount"] <= tips["auth_amount"] * (1 + TIP_ALLOWANCE) + 0.005).all()


def test_refunds_reference_a_real_payment_and_do_not_exceed_it(data: SimulatedData) -> None:
    rows = with_authorisation(data, data.settlements)
    refunds = rows[rows["kind"] == "refund"]
    assert len(refunds) > 0
    assert len(refunds) == int((data.settlements["kind"] == "refund").sum())
    assert (refunds["amount"] <= refunds["auth_amount"] + 0.005).all()
    assert (refunds["settled_at"] > refunds["auth_event_time"] + pd.Timedelta(days=2)).all()


def test_settled_while_declined_reports_the_money_that_moved_anyway(data: SimulatedData) -> None:
    tx, settlements = data.transactions, data.settlements
    declined = [*tx.loc[tx["is_fraud"] == 1, "transaction_id"].iloc[:40], "tx_never_seen"]
    moved = settled_while_declined(settlements, declined)
    charges = settlements[
        settlements["transaction_id"].isin(declined) & (settlements["kind"] != "refund")
    ]
    assert len(moved) > 0
    assert set(moved["settlement_id"]) == set(charges["settlement_id"])
    assert (moved["kind"] != "refund").all()

    everything = expected_discrepancies(settlements, data.injected_discrepancies, declined)
    extra = everything[everything["kind"] == "settled_while_declined"]
    assert set(extra["settlement_id"]) == set(moved["settlement_id"])
    assert len(everything) == len(data.injected_discrepancies) + len(moved)
    assert settled_while_declined(settlements, []).empty


# --- the command ------------------------------------------------------------------------


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Stands in for the root command."""

    register(app)
    return app


def run(*args: str) -> Any:
    return CliRunner().invoke(make_app(), ["simulate", *args])


def test_simulate_writes_parquet_that_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "sim.parquet"
    result = run(
        "--seed", "7", "--days", "2", "--cards", "300", "--fraud-rate", "0.05", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    cfg = SimulatorConfig(seed=7, days=2, n_cards=300, fraud_rate=0.05)
    expected = generate(cfg)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected.transactions)
    pd.testing.assert_frame_equal(pd.read_parquet(companion_path(out, "labels")), expected.labels)
    for name in ("settlements", "discrepancies", "episodes"):
        assert companion_path(out, name).exists()
    assert "fraud rate" in result.output
    for attack in ATTACKS:
        assert attack in result.output


def test_simulate_writes_wire_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    result = run("--days", "1", "--cards", "200", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    batch = transaction_decoder(64 * 1024).decode(lines)
    assert len(batch.items) == len(lines) > 0 and not batch.rejected
    settlements = pd.read_json(companion_path(out, "settlements"), lines=True)
    assert {"settlement_id", "transaction_id", "kind", "injected"} <= set(settlements.columns)


@pytest.mark.parametrize(
    "args",
    [
        ("--out", "sim.csv"),
        ("--days", "0", "--out", "sim.parquet"),
        ("--start", "yesterday", "--out", "x.jsonl"),
    ],
)
def test_simulate_rejects_bad_options(tmp_path: Path, args: tuple[str, ...]) -> None:
    args = tuple(str(tmp_path / a) if a.startswith(("sim", "x.")) else a for a in args)
    result = run(*args)
    assert result.exit_code == 2
    assert not any(tmp_path.iterdir())
