"""The authorization service's pure core: mapping, schema validation, batches."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.authorize import (
    AuthorizeConfig,
    Incoming,
    RecentIds,
    SchemaValidator,
    authorization_for,
    authorize_batch,
    decision_view,
    response_code,
)
from fraudstream.wire import Authorization, DeadLetter, Decision, encode
from fraudstream.wire.decode import Rejected

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)
NOW = T0 + timedelta(milliseconds=40)


def decision(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "transaction_id": "tx-1",
        "card_id": "card-9",
        "decision": "approve",
        "score": 0.12,
        "reasons": [{"code": "R1", "text": "velocity", "layer": "rules"}],
        "model_version": "xgb-7",
        "layers_run": ["rules", "xgb"],
        "degraded": False,
        "latency_ms": 4.2,
        "event_time": "2025-03-01T12:00:00Z",
        "decided_at": "2025-03-01T12:00:00.004Z",
        "amount": 42.5,
        "currency": "EUR",
    }
    base.update(overrides)
    return base


def raw(**overrides: Any) -> bytes:
    return json.dumps(decision(**overrides)).encode()


def message(value: bytes | None, offset: int = 0, key: bytes | None = b"card-9") -> Incoming:
    return Incoming(key=key, value=value, topic="decisions", partition=2, offset=offset)


@pytest.fixture(scope="module")
def validator() -> SchemaValidator:
    return SchemaValidator.from_file(AuthorizeConfig().decision_schema, max_bytes=4096)


@pytest.mark.parametrize(
    ("outcome", "degraded", "timeout_default", "code"),
    [
        ("approve", False, False, "00"),
        ("review", False, False, "00"),
        ("approve", True, True, "00"),  # fail-open default: approved, flagged
        ("decline", False, False, "59"),
        ("decline", True, False, "05"),
        ("decline", False, True, "91"),
        ("decline", True, True, "91"),
    ],
)
def test_response_codes(outcome: Any, degraded: bool, timeout_default: bool, code: str) -> None:
    assert response_code(outcome, degraded=degraded, timeout_default=timeout_default) == code


@pytest.mark.parametrize(
    ("outcome", "approved", "review"),
    [("approve", True, False), ("review", True, True), ("decline", False, False)],
)
def test_review_is_approved_and_queued_for_an_analyst(
    outcome: str, approved: bool, review: bool
) -> None:
    a = authorization_for(decision_view(decision(decision=outcome)), NOW)
    assert (a.approved, a.review, a.decision) == (approved, review, outcome)
    assert (a.transaction_id, a.card_id, a.amount, a.currency) == ("tx-1", "card-9", 42.5, "EUR")
    assert (a.event_time, a.authorized_at, a.model_version) == (T0, NOW, "xgb-7")
    assert a.timeout_default is False


def test_timeout_default_travels_with_the_authorisation() -> None:
    a = authorization_for(decision_view(decision(decision="decline", timeout_default=True)), NOW)
    assert (a.approved, a.response_code, a.timeout_default) == (False, "91", True)


def test_a_valid_decision_passes_the_published_schema(validator: SchemaValidator) -> None:
    doc = validator.validate(0, raw())
    assert isinstance(doc, dict) and doc["transaction_id"] == "tx-1"


@pytest.mark.parametrize(
    ("value", "kind", "fragment"),
    [
        (None, "malformed_json", "tombstone"),
        (b"{nope", "malformed_json", ""),
        (b"\xff\xfe", "malformed_json", ""),
        (raw(schema_version=2), "unknown_version", "schema_version 2"),
        (raw(decision="maybe"), "schema_violation", "decision"),
        (raw(score=1.5), "schema_violation", "score"),
        (raw(extra_field=1), "schema_violation", "extra_field"),
        (raw(event_time="2025-03-01T12:00:00"), "schema_violation", "event_time"),
        (json.dumps(["a"]).encode(), "schema_violation", ""),
        (raw(model_version="m" * 5000), "oversize", "4096-byte limit"),
    ],
)
def test_invalid_decisions_are_rejected_with_a_reason(
    validator: SchemaValidator, value: bytes | None, kind: str, fragment: str
) -> None:
    rejected = validator.validate(3, value)
    assert isinstance(rejected, Rejected)
    assert (rejected.index, rejected.kind) == (3, kind)
    assert fragment in rejected.reason


def test_batch_maps_dedupes_and_dead_letters(validator: SchemaValidator) -> None:
    recent = RecentIds(10)
    recent.update(["tx-old"])
    messages = [
        message(raw(transaction_id="tx-1", decision="review"), 10),
        message(b"{broken", 11, key=b"card-x"),
        message(raw(transaction_id="tx-1", decision="decline"), 12),  # repeat in the batch
        message(raw(transaction_id="tx-old"), 13),  # seen in an earlier batch
        message(raw(transaction_id="tx-2", card_id="card-5", decision="decline"), 14),
    ]
    out = authorize_batch(messages, validator, recent, NOW)
    assert out.duplicates == 2
    assert out.transaction_ids == ["tx-1", "tx-2"]
    assert [o.key for o in out.authorizations] == [b"card-9", b"card-5"]
    decoded = [msgspec.json.decode(o.value, type=Authorization) for o in out.authorizations]
    assert [(a.transaction_id, a.response_code, a.review) for a in decoded] == [
        ("tx-1", "00", True),
        ("tx-2", "59", False),
    ]
    assert dict(out.responses) == {"00": 1, "59": 1}
    (letter_out,) = out.deadletters
    assert letter_out.key == b"card-x"
    letter = msgspec.json.decode(letter_out.value, type=DeadLetter)
    assert (letter.source_topic, letter.partition, letter.offset) == ("decisions", 2, 11)
    assert (letter.kind, letter.original, letter.received_at) == ("malformed_json", b"{broken", NOW)
    assert json.loads(letter_out.value)["original"] == base64.b64encode(b"{broken").decode()
    # The caller remembers the ids once the broker acknowledged them; then they are repeats.
    recent.update(out.transaction_ids)
    again = authorize_batch(messages[:1], validator, recent, NOW)
    assert again.authorizations == [] and again.duplicates == 1


def test_recent_ids_are_bounded_oldest_out() -> None:
    recent = RecentIds(3)
    recent.update(["a", "b", "c"])
    recent.update(["a", "d"])  # "a" refreshed, so "b" is the oldest
    assert len(recent) == 3
    assert "b" not in recent and all(tx in recent for tx in ("a", "c", "d"))


_ids = st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=100, deadline=None)
@given(
    tx=_ids,
    card=_ids,
    outcome=st.sampled_from(["approve", "review", "decline"]),
    score=st.floats(0, 1),
    amount=st.floats(0, 1e9),
    degraded=st.booleans(),
    timeout_default=st.booleans(),
    at=_times,
)
def test_every_decision_the_engine_can_emit_passes_the_schema_and_maps(
    tx: str,
    card: str,
    outcome: Any,
    score: float,
    amount: float,
    degraded: bool,
    timeout_default: bool,
    at: datetime,
) -> None:
    validator = SchemaValidator.from_file(AuthorizeConfig().decision_schema, max_bytes=65536)
    engine_decision = Decision(
        schema_version=1,
        transaction_id=tx,
        card_id=card,
        decision=outcome,
        score=score,
        reasons=[],
        model_version="m",
        layers_run=[],
        degraded=degraded,
        latency_ms=1.0,
        event_time=at,
        decided_at=at,
        amount=amount,
        currency="USD",
        timeout_default=timeout_default,
    )
    out = authorize_batch([message(encode(engine_decision))], validator, RecentIds(1), NOW)
    assert not out.deadletters, out.deadletters
    (a,) = [msgspec.json.decode(o.value, type=Authorization) for o in out.authorizations]
    assert (a.transaction_id, a.card_id, a.amount, a.event_time) == (tx, card, amount, at)
    assert a.approved is (outcome != "decline")
