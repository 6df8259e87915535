"""The reconciler's matching rules, one by one, and against the simulator's ground truth."""

from __future__ import annotations

import functools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pytest

from fraudstream.reconcile import ReconcileConfig, Reconciler, replay
from fraudstream.reconcile.state import snapshot_from_builtins, to_builtins
from fraudstream.simulator import (
    ClearingConfig,
    SimulatedData,
    SimulatorConfig,
    expected_discrepancies,
    generate,
)
from fraudstream.wire import Authorization, ReconciliationException, Settlement, encode

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)


def auth(tx: str = "tx-1", **overrides: Any) -> Authorization:
    base: dict[str, Any] = {
        "schema_version": 1,
        "transaction_id": tx,
        "card_id": "card-1",
        "approved": True,
        "response_code": "00",
        "review": False,
        "timeout_default": False,
        "amount": 100.0,
        "currency": "EUR",
        "decision": "approve",
        "score": 0.1,
        "model_version": "m-1",
        "event_time": T0,
        "authorized_at": T0,
    }
    base.update(overrides)
    return Authorization(**base)


def declined(tx: str = "tx-1", **overrides: Any) -> Authorization:
    return auth(tx, approved=False, response_code="59", decision="decline", **overrides)


def stl(sid: str = "s-1", tx: str = "tx-1", **overrides: Any) -> Settlement:
    base: dict[str, Any] = {
        "schema_version": 1,
        "settlement_id": sid,
        "transaction_id": tx,
        "card_id": "card-1",
        "amount": 100.0,
        "currency": "EUR",
        "settled_at": T0 + timedelta(days=1),
        "kind": "capture",
    }
    base.update(overrides)
    return Settlement(**base)


def make(**overrides: Any) -> Reconciler:
    return Reconciler(ReconcileConfig(**overrides))


def kinds(found: list[ReconciliationException]) -> list[str]:
    return [e.kind for e in found]


def test_exact_capture_matches_and_closes() -> None:
    r = make()
    assert r.on_authorization(auth()) == []
    assert r.totals.open == 1
    assert r.on_settlement(stl()) == []
    totals = r.totals
    assert (totals.matched, totals.open, totals.opened, totals.closed) == (1, 0, 1, 1)
    assert r.advance(T0 + timedelta(days=30)) == []


def test_capture_off_by_more_than_the_tolerance_is_an_amount_mismatch() -> None:
    r = make(amount_tolerance=0.01)
    r.on_authorization(auth())
    assert r.on_settlement(stl(amount=100.01)) == []
    r2 = make(amount_tolerance=0.01)
    r2.on_authorization(auth())
    (found,) = r2.on_settlement(stl(amount=130.0))
    assert found.kind == "amount_mismatch"
    assert (found.expected_amount, found.actual_amount) == (100.0, 130.0)
    assert found.settlement_id == "s-1" and found.card_id == "card-1"
    # Detected at the event-time watermark, not at any wall clock.
    assert found.detected_at == T0 + timedelta(days=1)


@pytest.mark.parametrize(
    ("amount", "ok"), [(100.0, True), (125.0, True), (125.02, False), (99.0, False)]
)
def test_tip_adjusted_may_exceed_up_to_the_max_tip_share(amount: float, ok: bool) -> None:
    r = make(max_tip_share=0.25)
    r.on_authorization(auth())
    found = r.on_settlement(stl(amount=amount, kind="tip_adjusted"))
    assert kinds(found) == ([] if ok else ["amount_mismatch"])


def test_partial_captures_sum_to_the_authorisation_and_close_it() -> None:
    r = make()
    r.on_authorization(auth())
    assert r.on_settlement(stl("s-1", amount=30.0, kind="partial_capture")) == []
    assert r.state("tx-1").status == "open"  # type: ignore[union-attr]
    assert r.on_settlement(stl("s-2", amount=70.0, kind="partial_capture")) == []
    assert r.state("tx-1").status == "closed"  # type: ignore[union-attr]
    # Anything captured afterwards is over-capture.
    assert kinds(r.on_settlement(stl("s-3", amount=5.0, kind="partial_capture"))) == [
        "amount_mismatch"
    ]


def test_partial_captures_beyond_the_authorisation_are_a_mismatch() -> None:
    r = make()
    r.on_authorization(auth())
    r.on_settlement(stl("s-1", amount=60.0, kind="partial_capture"))
    assert kinds(r.on_settlement(stl("s-2", amount=60.0, kind="partial_capture"))) == [
        "amount_mismatch"
    ]


def test_second_full_capture_is_a_duplicate_not_an_amount_mismatch() -> None:
    r = make()
    r.on_authorization(auth())
    r.on_settlement(stl("s-1"))
    (found,) = r.on_settlement(stl("s-2", settled_at=T0 + timedelta(days=1, hours=2)))
    assert found.kind == "duplicate_settlement" and found.settlement_id == "s-2"


def test_redelivered_messages_change_nothing() -> None:
    r = make()
    r.on_authorization(auth())
    r.on_settlement(stl("s-1"))
    before = r.totals
    assert r.on_authorization(auth()) == []
    assert r.on_settlement(stl("s-1")) == []
    after = r.totals
    assert after.redelivered == 2
    assert msgspec.structs.replace(after, redelivered=0) == before


def test_refunds_are_fine_up_to_the_captured_total() -> None:
    r = make()
    r.on_authorization(auth())
    r.on_settlement(stl("s-1"))
    later = T0 + timedelta(days=5)
    assert r.on_settlement(stl("r-1", amount=60.0, kind="refund", settled_at=later)) == []
    assert r.on_settlement(stl("r-2", amount=40.0, kind="refund", settled_at=later)) == []
    (found,) = r.on_settlement(stl("r-3", amount=1.0, kind="refund", settled_at=later))
    assert found.kind == "refund_exceeds_capture"


def test_a_refund_before_the_last_partial_capture_may_reach_the_authorised_amount() -> None:
    r = make()
    r.on_authorization(auth())
    r.on_settlement(stl("s-1", amount=30.0, kind="partial_capture"))
    assert r.on_settlement(stl("r-1", amount=100.0, kind="refund")) == []


def test_a_split_shipment_refunded_after_its_window_is_still_fine() -> None:
    r = make(settle_window_hours=48)
    r.on_authorization(auth())
    r.on_settlement(stl("s-1", amount=30.0, kind="partial_capture"))
    r.advance(T0 + timedelta(days=5))  # window over: closed, partly captured
    assert (
        r.on_settlement(stl("r-1", amount=100.0, kind="refund", settled_at=T0 + timedelta(days=6)))
        == []
    )
    assert (
        r.on_settlement(
            stl("s-2", amount=70.0, kind="partial_capture", settled_at=T0 + timedelta(days=7))
        )
        == []
    )


def test_a_refund_before_anything_was_captured_exceeds_it() -> None:
    r = make()
    r.on_authorization(auth())
    assert kinds(r.on_settlement(stl("r-1", amount=1.0, kind="refund"))) == [
        "refund_exceeds_capture"
    ]


def test_other_currency_is_a_currency_mismatch() -> None:
    r = make()
    r.on_authorization(auth())
    (found,) = r.on_settlement(stl(currency="USD"))
    assert found.kind == "currency_mismatch"
    assert (found.expected_currency, found.actual_currency) == ("EUR", "USD")
    # The payment did settle: no authorization_not_settled follows.
    assert r.advance(T0 + timedelta(days=60)) == []


def test_settling_a_declined_payment_is_reported_refunds_are_not() -> None:
    r = make()
    r.on_authorization(declined())
    assert r.totals.open == 0  # nothing is expected of a declined payment
    assert kinds(r.on_settlement(stl("s-1"))) == ["settled_while_declined"]
    assert r.on_settlement(stl("r-1", kind="refund", settled_at=T0 + timedelta(days=3))) == []
    # A declined payment can be over-captured too: both are reported.
    assert kinds(r.on_settlement(stl("s-2"))) == ["settled_while_declined", "duplicate_settlement"]


def test_settlement_without_authorization_after_the_grace_and_a_late_one_still_matches() -> None:
    r = make(orphan_grace_hours=6)
    at = T0 + timedelta(days=1)
    assert r.on_settlement(stl(settled_at=at)) == []
    assert r.totals.open == 1
    assert r.advance(at + timedelta(hours=5)) == []
    (found,) = r.advance(at + timedelta(hours=6))
    assert found.kind == "settlement_without_authorization"
    assert found.expected_amount is None and found.actual_amount == 100.0
    assert found.detected_at == at + timedelta(hours=6)
    assert r.totals.open == 0
    # The authorisation turns up: the settlement matches it, nothing more is reported.
    assert r.on_authorization(auth()) == []
    assert r.advance(at + timedelta(days=30)) == []
    assert r.totals.matched == 1


def test_an_authorisation_within_the_grace_matches_silently() -> None:
    r = make(orphan_grace_hours=6)
    r.on_settlement(stl(settled_at=T0))
    assert r.on_authorization(auth(event_time=T0 + timedelta(hours=1))) == []
    assert r.advance(T0 + timedelta(days=30)) == []


def test_approved_but_never_captured_after_the_settle_window() -> None:
    r = make(settle_window_hours=48)
    r.on_authorization(auth())
    assert r.advance(T0 + timedelta(hours=47)) == []
    (found,) = r.advance(T0 + timedelta(hours=48))
    assert found.kind == "authorization_not_settled"
    assert found.settlement_id is None and found.actual_amount is None
    assert r.totals.open == 0


def test_a_partly_captured_authorisation_closes_silently_at_the_window() -> None:
    r = make(settle_window_hours=48)
    r.on_authorization(auth())
    r.on_settlement(stl(amount=40.0, kind="partial_capture"))
    assert r.advance(T0 + timedelta(days=3)) == []
    assert r.state("tx-1").status == "closed"  # type: ignore[union-attr]


def test_declined_and_never_settled_is_not_an_exception() -> None:
    r = make()
    r.on_authorization(declined())
    assert r.advance(T0 + timedelta(days=60)) == []


def test_state_is_forgotten_after_the_retention() -> None:
    r = make(retention_days=10)
    r.on_authorization(auth())
    r.on_settlement(stl())
    r.advance(T0 + timedelta(days=10))
    assert r.state("tx-1") is not None
    r.advance(T0 + timedelta(days=11, minutes=1))
    assert r.state("tx-1") is None and r.totals.evicted == 1
    assert r.take_changes().deletes == ["tx-1"]


def test_watermark_never_moves_back() -> None:
    r = make()
    r.advance(T0 + timedelta(days=2))
    r.advance(T0)
    assert r.watermark == T0 + timedelta(days=2)


def test_changes_and_snapshot_are_plain_json() -> None:
    r = make()
    r.on_authorization(auth())
    r.on_settlement(stl("s-1", tx="tx-2"))
    changes = r.take_changes()
    assert sorted(changes.upserts) == ["tx-1", "tx-2"]
    assert r.take_changes().upserts == {}
    blob = msgspec.json.encode(to_builtins(r.snapshot()))
    restored = Reconciler(ReconcileConfig(), snapshot_from_builtins(msgspec.json.decode(blob)))
    assert restored.totals == r.totals and restored.states() == r.states()


def test_config_rejects_a_retention_shorter_than_the_windows() -> None:
    with pytest.raises(ValueError, match="retention_days"):
        ReconcileConfig(settle_window_hours=24 * 50, retention_days=45)


def test_exceptions_follow_the_published_schema() -> None:
    r = make()
    r.on_authorization(auth())
    (found,) = r.on_settlement(stl(amount=1.0))
    decoded = msgspec.json.decode(encode(found), type=ReconciliationException)
    assert decoded == found


# --- against the simulator's ground truth -------------------------------------------------

SIMULATOR_NAMES = {
    "authorization_not_settled": "missing_settlement",
    "settlement_without_authorization": "unknown_authorization",
}


# Busy clearing: most payments split, tipped or refunded, so refunds often come before
# the last part of a split shipment and after its settle window.
BUSY = {"refund_rate": 0.3, "partial_capture_rate": 0.8, "tip_rate": 0.9, "max_tip_share": 0.4}


@functools.cache
def simulated(seed: int, rates: float, busy: bool) -> SimulatedData:
    clearing = ClearingConfig(
        missing_rate=rates,
        amount_mismatch_rate=rates,
        currency_mismatch_rate=rates,
        duplicate_rate=rates,
        unknown_authorization_rate=rates,
        **(BUSY if busy else {}),
    )
    cfg = SimulatorConfig(seed=seed, n_cards=800, n_terminals=300, days=6, clearing=clearing)
    return generate(cfg)


@pytest.mark.parametrize(
    ("seed", "rates", "busy"), [(5, 0.002, False), (11, 0.01, False), (23, 0.03, True)]
)
def test_finds_exactly_the_simulators_discrepancies(seed: int, rates: float, busy: bool) -> None:
    data = simulated(seed, rates, busy)
    ids = data.transactions["transaction_id"].to_numpy()
    declined_ids = set(np.random.default_rng(seed).choice(ids, len(ids) // 50, replace=False))
    cfg = ReconcileConfig(max_tip_share=data.config.clearing.max_tip_share)
    r = Reconciler(cfg)
    auths = replay.authorizations(data.transactions, declined_ids)
    stls = replay.settlements(data.settlements)
    found: list[ReconciliationException] = []
    for event in replay.in_time_order(auths, stls):
        if isinstance(event, Authorization):
            found += r.on_authorization(event)
        else:
            found += r.on_settlement(event)
    last = max(replay.event_time(e) for e in [*auths, *stls])
    found += r.advance(last + timedelta(days=cfg.retention_days + 1))

    got = Counter(
        (SIMULATOR_NAMES.get(e.kind, e.kind), e.transaction_id, e.settlement_id) for e in found
    )
    expected = expected_discrepancies(data.settlements, data.injected_discrepancies, declined_ids)
    # A declined payment that never settles is what should happen, not a discrepancy;
    # expected_discrepancies still lists the missing settlement injected into it.
    expected = expected[
        ~(
            (expected["kind"] == "missing_settlement")
            & expected["transaction_id"].isin(declined_ids)
        )
    ]
    want = Counter(
        (kind, tx, sid if isinstance(sid, str) else None)
        for kind, tx, sid in expected[["kind", "transaction_id", "settlement_id"]].itertuples(
            index=False
        )
    )
    assert sum(want.values()) > 0
    assert got == want
    totals = r.totals
    assert totals.open == 0 and totals.opened == totals.closed
    assert sum(totals.exceptions.values()) == len(found)
    # Memory is bounded: everything is forgotten once the retention has passed.
    assert r.states() == {} and totals.evicted > 0
