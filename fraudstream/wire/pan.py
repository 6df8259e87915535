"""Card numbers (PANs) never travel past ingress: a keyed-HMAC token stands for them.

A payment system must not keep a primary account number in clear in logs, Redis or
Kafka topics (PCI DSS 3.4). At ingress the whole number is replaced by
``tok_<32 letters>`` = HMAC-SHA256(key, digits), truncated to 128 bits and written
with the letters a..p (no digits, so a token never looks like a card number): stable, so velocity
features still join on it, and useless without the key (a plain hash of a 16-digit
number with a known BIN is brute-forced in minutes; a keyed one is not). Only a masked
display form is kept (first 6 and last 4 digits at most, as PCI DSS allows).

:func:`scrub` is the safety net for bytes kept whole, such as a dead letter's original
message: every run of 13 to 19 digits that passes the Luhn check, written plainly or
grouped by single spaces or hyphens, is replaced by its token. :func:`find_pans` is
the matching scanner the security tests run over logs, Redis and topics.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections import Counter
from collections.abc import Collection
from typing import Any

import msgspec

TOKEN_PREFIX = "tok_"  # noqa: S105 (a label, not a secret)
_TOKEN_BYTES = 16
MIN_DIGITS, MAX_DIGITS = 13, 19
_HEX_AS_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")

# 13-19 digits, optionally grouped by one space or hyphen, not touching other digits.
_CANDIDATE = re.compile(rb"(?<![0-9])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])")
_SEPARATORS = re.compile(rb"[ \-]")
# The ingress's fast path: with the separators deleted and every digit written 0, a
# candidate is a run of at least 13 zeros. Necessary, not sufficient (deleting a
# separator can join two shorter runs), so a hit goes on to _CANDIDATE; 1.3 us per
# simulated transaction instead of the regex's 14 (which tries a match at every digit).
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_SHORTEST_RUN = b"0" * 13


def may_hold_pan(data: bytes) -> bool:
    """False only when ``data`` holds no card-number candidate at all."""
    return _SHORTEST_RUN in data.translate(_DIGITS_AS_ZERO, b" -")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every card number satisfies."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def is_pan(digits: str) -> bool:
    return MIN_DIGITS <= len(digits) <= MAX_DIGITS and luhn_valid(digits)


def mask(digits: str) -> str:
    """First 6 and last 4 digits, the rest as ``*`` (fewer kept for short numbers, so
    that at least 3 digits are always hidden)."""
    keep_head, keep_tail = 6, 4
    while keep_head + keep_tail > len(digits) - 3 and keep_head > 0:
        keep_head -= 1
    hidden = len(digits) - keep_head - keep_tail
    return digits[:keep_head] + "*" * hidden + digits[len(digits) - keep_tail :]


class PanTokenizer:
    """Keyed tokens for card numbers; the key comes from settings as a secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the PAN tokenization key must be at least 16 bytes")
        self._key = key

    def token(self, pan: str) -> str:
        digits = _digits_of(pan)
        if not is_pan(digits):
            raise ValueError("not a card number (13-19 digits passing the Luhn check)")
        mac = hmac.new(self._key, digits.encode("ascii"), hashlib.sha256).digest()
        # Letters only (each 4 bits as a..p): a hex token can hold a run of 13+ digits
        # that passes the Luhn check, and would look like a card number to a scanner.
        return TOKEN_PREFIX + mac[:_TOKEN_BYTES].hex().translate(_HEX_AS_LETTERS)

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every card number in it replaced by its token."""

        def replace(match: re.Match[bytes]) -> bytes:
            digits = _SEPARATORS.sub(b"", match.group(0)).decode("ascii")
            return self.token(digits).encode("ascii") if is_pan(digits) else match.group(0)

        return _CANDIDATE.sub(replace, data)


def mask_pans(data: bytes) -> bytes:
    """``data`` with every card number in it replaced by its masked form (first 6 and
    last 4 digits): the keyless last line of defence for bytes that leave the engine
    without passing a tokenizer (dead letters of other topics, message keys)."""

    def replace(match: re.Match[bytes]) -> bytes:
        digits = _SEPARATORS.sub(b"", match.group(0)).decode("ascii")
        return mask(digits).encode("ascii") if is_pan(digits) else match.group(0)

    return _CANDIDATE.sub(replace, data)


def letters_digest(data: bytes) -> str:
    """SHA-256 of ``data`` written with the letters a..p: a hex digest can hold a
    Luhn-valid run of 13+ digits and look like a card number to a scanner."""
    return hashlib.sha256(data).hexdigest().translate(_HEX_AS_LETTERS)


def find_pans(data: bytes) -> list[str]:
    """Every Luhn-valid 13-19 digit number in ``data`` (masked, so a failing test does
    not print one in clear)."""
    found = []
    for match in _CANDIDATE.finditer(data):
        digits = _SEPARATORS.sub(b"", match.group(0)).decode("ascii")
        if is_pan(digits):
            found.append(mask(digits))
    return found


def _digits_of(pan: str) -> str:
    return pan.replace(" ", "").replace("-", "")


CARD_NUMBER_FIELD = "card_number"
# Field label for a replaced number outside the known fields, or in a message that is
# not a JSON object (labels stay bounded whatever the input holds).
OTHER_FIELD = "other"
_REWRITE_LOG_EVERY = 1000
log = logging.getLogger(__name__)
_json_object = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder().encode


class CardNumberIngress:
    """The ingress step for raw transaction messages (producer side and worker side).

    A message carrying ``card_number`` leaves with ``card_id`` set to the number's keyed
    token and ``card_display`` to its masked form, and without the number. Anything else
    that looks like a card number anywhere in the message is replaced by its token too,
    so a message that is dead-lettered afterwards keeps no number in clear. Messages
    without one pass through byte for byte (the common, fast path: a substring test).

    That includes identifiers: a ``transaction_id`` (or terminal, merchant, device id)
    that holds 13-19 digits passing the Luhn check cannot be told from a card number,
    so it is replaced by its token too, the same token every time (dedupe and the
    decision's key stay consistent), and the decision carries the token. Such rewrites
    are counted per field in :attr:`rewritten` (the worker exports them as
    ``fraudstream_ingress_rewritten``) and logged, without the number: upstreams should
    use identifiers that cannot pass for card numbers (README, "Security").
    """

    def __init__(
        self,
        tokenizer: PanTokenizer,
        *,
        accept: bool = True,
        known_fields: Collection[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        # accept=False: card numbers are only scrubbed, so a message carrying one fails
        # validation (``card_number`` is not a wire field) and is dead-lettered.
        self.accept = accept
        self._known = frozenset(known_fields)
        self.rewritten: Counter[str] = Counter()  # messages, per field rewritten

    @classmethod
    def from_key(cls, key: bytes | None, known_fields: Collection[str] = ()) -> CardNumberIngress:
        """With the configured key: card numbers become stable tokens. Without one: a
        key that lives as long as the process scrubs them, and such messages are refused.
        ``known_fields`` name the rewrites counted (others count as ``other``)."""
        if key is None:
            tokenizer, accept = PanTokenizer(secrets.token_bytes(32)), False
        else:
            tokenizer, accept = PanTokenizer(key), True
        return cls(tokenizer, accept=accept, known_fields=known_fields)

    def __call__(self, raw: bytes) -> bytes:
        if not may_hold_pan(raw) or not _CANDIDATE.search(raw):
            return raw
        try:
            doc = _json_object.decode(raw)
        except msgspec.DecodeError:
            doc = None
        number = None if doc is None else doc.get(CARD_NUMBER_FIELD)
        if self.accept and doc is not None and isinstance(number, str):
            digits = _digits_of(number)
            if is_pan(digits):
                del doc[CARD_NUMBER_FIELD]
                doc["card_id"] = self.tokenizer.token(digits)
                doc["card_display"] = mask(digits)
                raw = _encode(doc)
        scrubbed = self.tokenizer.scrub(raw)
        if scrubbed == raw:
            return raw
        self._count_rewrites(doc)
        return scrubbed

    def _count_rewrites(self, doc: dict[str, Any] | None) -> None:
        """Which fields held a number that passes for a card's (a ``card_number`` left
        here was refused: no key is configured)."""
        fields = set()
        for name, value in (doc or {}).items():
            text = value.encode() if isinstance(value, str) else _encode(value)
            if find_pans(text):
                known = name in self._known or name == CARD_NUMBER_FIELD
                fields.add(name if known else OTHER_FIELD)
        for field in fields or {OTHER_FIELD}:
            self.rewritten[field] += 1
            if self.rewritten[field] % _REWRITE_LOG_EVERY == 1:
                log.warning(
                    "ingress: %s held a number that passes the card-number check; it was "
                    "replaced by its token (%d such messages since start)",
                    field,
                    self.rewritten[field],
                )
