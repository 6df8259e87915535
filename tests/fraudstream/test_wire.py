from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import fastjsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.wire import Transaction, encode, transaction_decoder
from fraudstream.wire.decode import ORIGINAL_KEPT_BYTES, dead_letter, dead_letter_key
from fraudstream.wire.jsonschema import SCHEMA_DIR, schema_for, stale_schemas
from fraudstream.wire.pan import find_pans, letters_digest


def tx_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "transaction_id": "tx-1",
        "event_time": "2025-03-01T12:00:00Z",
        "card_id": "card-9",
        "terminal_id": "term-3",
        "amount": 42.5,
        "currency": "EUR",
    }
    base.update(overrides)
    return base


def raw(**overrides: Any) -> bytes:
    return json.dumps(tx_dict(**overrides)).encode()


def test_valid_message_decodes_with_optional_fields() -> None:
    batch = transaction_decoder(4096).decode(
        [
            raw(
                device_id="dev-1",
                ip="10.1.2.3",
                country="FR",
                mcc="5411",
                latitude=48.8,
                longitude=2.3,
                channel="ecom",
            )
        ]
    )
    assert not batch.rejected
    (tx,) = batch.items
    assert tx.event_time == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert tx.channel == "ecom" and tx.mcc == "5411"


@pytest.mark.parametrize(
    ("message", "kind", "fragment"),
    [
        (b"{not json", "malformed_json", "malformed"),
        (b"", "malformed_json", ""),
        (raw(schema_version=2), "unknown_version", "schema_version 2"),
        (raw(amount=-1), "schema_violation", "amount"),
        (raw(currency="euro"), "schema_violation", "currency"),
        (raw(event_time="2025-03-01T12:00:00"), "schema_violation", "timezone"),
        (raw(surprise=1), "schema_violation", "surprise"),
        (raw(amount="12"), "schema_violation", "amount"),
        (json.dumps({"schema_version": 1}).encode(), "schema_violation", "missing required"),
        (b"[1,2,3]", "schema_violation", "object"),
    ],
)
def test_each_defect_is_classified_with_a_reason(message: bytes, kind: str, fragment: str) -> None:
    batch = transaction_decoder(4096).decode([raw(), message, raw(transaction_id="tx-2")])
    assert [t.transaction_id for t in batch.items] == ["tx-1", "tx-2"]
    assert batch.indices == [0, 2]
    (rejected,) = batch.rejected
    assert rejected.index == 1
    assert rejected.kind == kind
    assert fragment.lower() in rejected.reason.lower()
    assert rejected.raw == message


def test_oversize_is_rejected_before_parsing() -> None:
    big = raw(merchant_id="m" * 60, device_id="d" * 60)
    batch = transaction_decoder(len(big) - 1).decode([big])
    assert batch.rejected[0].kind == "oversize"
    assert str(len(big)) in batch.rejected[0].reason


def test_tombstone_is_rejected() -> None:
    batch = transaction_decoder(4096).decode([None])
    assert batch.rejected[0].kind == "malformed_json"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_arbitrary_bytes_never_raise_and_nothing_is_lost(raws: list[bytes]) -> None:
    batch = transaction_decoder(256).decode(raws)
    assert len(batch.items) + len(batch.rejected) == len(raws)
    assert sorted(batch.indices + [r.index for r in batch.rejected]) == list(range(len(raws)))
    for rejected in batch.rejected:
        assert rejected.raw == raws[rejected.index]
        assert rejected.reason


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*tx_dict(), "x", "ip", "mcc"]), json_values))
def test_wrong_types_in_known_fields_are_rejected_cleanly(fields: dict[str, Any]) -> None:
    message = json.dumps({**tx_dict(), **fields}).encode()
    batch = transaction_decoder(4096).decode([message])
    if batch.items:
        assert isinstance(batch.items[0], Transaction)
    else:
        assert batch.rejected[0].kind in {"schema_violation", "unknown_version"}


@given(
    st.builds(
        Transaction,
        schema_version=st.just(1),
        transaction_id=st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True),
        event_time=st.datetimes(timezones=st.just(UTC)),
        card_id=st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True),
        terminal_id=st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True),
        amount=st.floats(min_value=0, max_value=1e9),
        currency=st.sampled_from(["EUR", "USD", "GBP"]),
    )
)
def test_encode_decode_round_trip(tx: Transaction) -> None:
    batch = transaction_decoder(4096).decode([encode(tx)])
    assert batch.items == [tx]


def test_committed_json_schemas_match_the_code() -> None:
    assert stale_schemas() == [], "run `fraudstream schemas` and commit config/schemas/"
    assert (SCHEMA_DIR / "transactions.v1.json").exists()


def test_published_schema_agrees_with_the_decoder() -> None:
    validate = fastjsonschema.compile(schema_for("transactions"))
    good = tx_dict(channel="pos", country="DE")
    validate(good)
    for bad in (tx_dict(amount=-3), tx_dict(currency="eu"), tx_dict(schema_version=2)):
        with pytest.raises(fastjsonschema.JsonSchemaException):
            validate(bad)
        assert transaction_decoder(4096).decode([json.dumps(bad).encode()]).rejected


def test_decision_schema_is_what_decisions_encode_to() -> None:
    from streams.scoring import PlaceholderPipeline

    tx = msgspec.json.decode(raw(), type=Transaction)
    (decision,) = PlaceholderPipeline().decide([tx], datetime(2025, 3, 1, 12, 0, 1, tzinfo=UTC))
    fastjsonschema.compile(schema_for("decisions"))(json.loads(encode(decision)))


@pytest.mark.parametrize("size", [10, ORIGINAL_KEPT_BYTES, ORIGINAL_KEPT_BYTES + 1, 1_000_000])
def test_a_dead_letter_keeps_a_large_original_as_head_size_and_digest(size: int) -> None:
    original = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    letter = json.loads(
        dead_letter(
            topic="t",
            partition=2,
            offset=9,
            kind="oversize",
            reason="too big",
            original=original,
            received_at=datetime(2025, 1, 1, tzinfo=UTC),
        )
    )
    kept = base64.b64decode(letter["original"])
    if size <= ORIGINAL_KEPT_BYTES:
        assert kept == original and not letter["original_truncated"]
        assert letter["original_size"] is None and letter["original_sha256"] is None
    else:
        # Fits in a Kafka message whatever the input's size; says which input it was.
        assert kept == original[:ORIGINAL_KEPT_BYTES] and letter["original_truncated"]
        assert letter["original_size"] == size
        assert letter["original_sha256"] == letters_digest(original)
        assert (
            letters_digest(original).translate(
                str.maketrans("abcdefghijklmnop", "0123456789abcdef")
            )
            == hashlib.sha256(original).hexdigest()
        )
    assert (letter["partition"], letter["offset"]) == (2, 9)


def test_a_dead_letter_masks_card_numbers_in_its_original_and_key() -> None:
    original = b'{"note": "card 4111 1111 1111 1111 and 5500-0000-0000-0004"}'
    letter = json.loads(
        dead_letter(
            topic="settlements",
            partition=0,
            offset=1,
            kind="schema_violation",
            reason="r",
            original=original,
            received_at=datetime(2025, 1, 1, tzinfo=UTC),
        )
    )
    kept = base64.b64decode(letter["original"])
    assert find_pans(original) and not find_pans(kept)
    assert b"411111******1111" in kept and b"550000******0004" in kept
    assert dead_letter_key(b"4111111111111111") == b"411111******1111"
    assert dead_letter_key(b"card-7") == b"card-7" and dead_letter_key(None) is None
