"""Card numbers: Luhn check, keyed tokens, masking, scrubbing of kept bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fraudstream.wire import encode, transaction_decoder
from fraudstream.wire.pan import (
    _CANDIDATE,
    CardNumberIngress,
    PanTokenizer,
    find_pans,
    is_pan,
    luhn_valid,
    mask,
    may_hold_pan,
)

KEY = b"k" * 32
VISA_TEST = "4111111111111111"  # the well-known test numbers
AMEX_TEST = "378282246310005"


def check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` Luhn-valid."""
    for d in "0123456789":
        if luhn_valid(body + d):
            return d
    raise AssertionError("unreachable: one digit always works")


pans = st.integers(min_value=12, max_value=18).flatmap(
    lambda n: st.text("0123456789", min_size=n, max_size=n).map(lambda b: b + check_digit(b))
)


def test_luhn_on_known_numbers() -> None:
    assert luhn_valid(VISA_TEST) and luhn_valid(AMEX_TEST)
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("4111-1111")  # not digits
    assert is_pan(VISA_TEST) and not is_pan("4242")


@given(pans)
def test_token_is_stable_keyed_and_hides_the_number(pan: str) -> None:
    tokens = PanTokenizer(KEY)
    token = tokens.token(pan)
    assert token == tokens.token(pan)
    assert token.startswith("tok_") and len(token) == 4 + 32
    assert pan not in token
    assert not any(c.isdigit() for c in token)  # never mistaken for a card number
    assert PanTokenizer(b"x" * 32).token(pan) != token


def test_grouped_and_plain_numbers_get_the_same_token() -> None:
    tokens = PanTokenizer(KEY)
    assert tokens.token("4111 1111 1111 1111") == tokens.token(VISA_TEST)
    assert tokens.token("4111-1111-1111-1111") == tokens.token(VISA_TEST)


def test_refuses_what_is_not_a_card_number_and_short_keys() -> None:
    with pytest.raises(ValueError, match="not a card number"):
        PanTokenizer(KEY).token("4111111111111112")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PanTokenizer(b"short")


@given(pans)
def test_mask_keeps_at_most_first_six_and_last_four(pan: str) -> None:
    shown = mask(pan)
    assert len(shown) == len(pan)
    visible = [c for c in shown if c != "*"]
    assert len(visible) <= 10 and shown.count("*") >= 3
    assert shown[-4:] == pan[-4:]
    assert not is_pan("".join(visible))


@given(pans, st.text(max_size=40), st.text(max_size=40))
def test_scrub_removes_every_card_number_and_keeps_the_rest(
    pan: str, left: str, right: str
) -> None:
    # Free text around a number in a JSON document, as a dead letter would hold it.
    doc = json.dumps({"note": left, "card_number": pan, "tail": right}).encode()
    scrubbed = PanTokenizer(KEY).scrub(doc)
    assert pan.encode() not in scrubbed, "a card number survived scrubbing"
    assert PanTokenizer(KEY).token(pan).encode() in scrubbed


@st.composite
def texts_with_numbers(draw: st.DrawFn) -> bytes:
    """A card number (or any digit run), grouped at random by single spaces or dashes,
    between arbitrary bytes."""
    digits = draw(pans | st.text("0123456789", min_size=1, max_size=25))
    seps = draw(st.lists(st.sampled_from(["", " ", "-"]), min_size=len(digits) - 1))
    grouped = digits[0] + "".join(s + d for s, d in zip(seps, digits[1:], strict=False))
    return draw(st.binary(max_size=20)) + grouped.encode() + draw(st.binary(max_size=20))


@given(st.binary(max_size=80) | texts_with_numbers())
def test_the_fast_path_never_misses_a_candidate(data: bytes) -> None:
    """The ingress skips a message only when the prefilter says it holds nothing: it
    must be true of everything the full pattern would find."""
    if find_pans(data) or _CANDIDATE.search(data):
        assert may_hold_pan(data)


def test_the_fast_path_passes_grouped_numbers_and_skips_ordinary_messages() -> None:
    assert may_hold_pan(b'{"x": "4111-1111 1111-1111"}')
    assert not may_hold_pan(b'{"amount": 7.74, "event_time": "2025-01-01T00:28:39.706Z"}')


def test_scrub_finds_grouped_numbers_and_leaves_other_digits() -> None:
    grouped = " ".join(VISA_TEST[i : i + 4] for i in range(0, 16, 4))
    text = f"pay {grouped} id 12345".encode()
    scrubbed = PanTokenizer(KEY).scrub(text)
    assert find_pans(text) == ["411111******1111"]
    assert find_pans(scrubbed) == []
    assert scrubbed.endswith(b" id 12345")
    not_luhn = b"order 4111111111111112 ok"
    assert PanTokenizer(KEY).scrub(not_luhn) == not_luhn


def transaction_with(**fields: object) -> bytes:
    doc: dict[str, object] = {
        "schema_version": 1,
        "transaction_id": "tx-1",
        "event_time": "2026-03-02T12:00:00Z",
        "card_id": "placeholder",
        "terminal_id": "T1",
        "amount": 12.5,
        "currency": "EUR",
    }
    doc.update(fields)
    return json.dumps(doc).encode()


def test_ingress_replaces_the_card_number_by_its_token_and_masked_display() -> None:
    ingress = CardNumberIngress(PanTokenizer(KEY))
    decoded = transaction_decoder(65536, ingress).decode(
        [transaction_with(card_number="4111 1111 1111 1111")]
    )
    assert not decoded.rejected
    tx = decoded.items[0]
    assert tx.card_id == PanTokenizer(KEY).token(VISA_TEST)
    assert tx.card_display == "411111******1111"
    assert find_pans(encode(tx)) == []


def test_ingress_leaves_messages_without_card_numbers_byte_for_byte() -> None:
    raw = transaction_with()
    assert CardNumberIngress(PanTokenizer(KEY))(raw) is raw


def test_rejected_messages_keep_no_card_number_in_clear() -> None:
    ingress = CardNumberIngress(PanTokenizer(KEY))
    broken = b'{"card_number": "' + VISA_TEST.encode() + b'", not json'
    wrong_type = transaction_with(card_number=AMEX_TEST, amount="twelve")
    decoded = transaction_decoder(65536, ingress).decode([broken, wrong_type])
    assert len(decoded.rejected) == 2 and not decoded.items
    for rejected in decoded.rejected:
        assert find_pans(rejected.raw) == []
        assert b"tok_" in rejected.raw


def test_without_a_configured_key_card_numbers_are_refused_and_scrubbed() -> None:
    ingress = CardNumberIngress.from_key(None)
    decoded = transaction_decoder(65536, ingress).decode(
        [transaction_with(card_number=VISA_TEST), transaction_with()]
    )
    assert len(decoded.items) == 1 and len(decoded.rejected) == 1
    rejected = decoded.rejected[0]
    assert rejected.kind == "schema_violation" and "card_number" in rejected.reason
    assert find_pans(rejected.raw) == []
    configured = CardNumberIngress.from_key(KEY)
    assert configured(transaction_with(card_number=VISA_TEST)) != ingress(
        transaction_with(card_number=VISA_TEST)
    )


def test_an_identifier_that_passes_for_a_card_number_is_tokenized_and_counted() -> None:
    """Nothing tells a 16-digit Luhn-valid id from a card number, so it cannot stay in
    clear; it becomes the same token every time (dedupe and keys stay consistent), and
    the rewrite is counted under its field so operators see it."""
    ingress = CardNumberIngress(PanTokenizer(KEY), known_fields={"transaction_id", "card_id"})
    decoder = transaction_decoder(65536, ingress)
    numeric_id = "ord-" + VISA_TEST
    first = decoder.decode([transaction_with(transaction_id=numeric_id)]).items[0]
    again = decoder.decode([transaction_with(transaction_id=numeric_id)]).items[0]
    assert (
        first.transaction_id
        == again.transaction_id
        == ("ord-" + PanTokenizer(KEY).token(VISA_TEST))
    )
    assert ingress.rewritten == {"transaction_id": 2}
    # A number in a field the engine does not know, and bytes that are not JSON.
    ingress(transaction_with(merchant_note=AMEX_TEST))
    ingress(b"not json " + AMEX_TEST.encode())
    assert ingress.rewritten == {"transaction_id": 2, "other": 2}
    # The card_number field is what ingress is for: not a rewrite.
    ingress(transaction_with(card_number=VISA_TEST))
    assert sum(ingress.rewritten.values()) == 4
    # Digits that fail the Luhn check are left alone and not counted.
    plain = transaction_with(transaction_id="4111111111111112")
    assert ingress(plain) is plain and sum(ingress.rewritten.values()) == 4


def test_a_refused_card_number_counts_under_its_own_field() -> None:
    ingress = CardNumberIngress.from_key(None, known_fields={"transaction_id"})
    ingress(transaction_with(card_number=VISA_TEST))
    assert ingress.rewritten == {"card_number": 1}
