"""Scanning logs, Kafka topics and Redis for card numbers in clear (PCI DSS 3.4).

The detector is the project's own (:func:`fraudstream.wire.pan.find_pans`: every run of
13-19 digits, plain or grouped by single spaces or hyphens, that passes the Luhn check).
Run over raw bytes it also flags numbers that cannot be card numbers: one in ten epoch
milliseconds (13 digits) and one in ten float fractions (``"score":0.4372186064720154``
holds a 16-digit run) pass the Luhn check. So structured data is walked, and only these
positions are left out, each for a reason that holds by construction:

* the digits after the decimal point of a JSON number (a fraction: a card number sent
  as a JSON number is an integer, and integers and integer parts are scanned);
* integers in the range of epoch milliseconds of this century in fields that hold an
  epoch-ms time by definition: :data:`JSON_TIME_FIELDS` in Kafka messages and
  :func:`is_redis_time_field` in the feature store's card hashes;
* in log lines, the digits after the decimal point of a number: a float's fraction, as
  Faust prints one in ``Timer commit is overlapping (interval=2.8
  runtime=2.847597851003229)``; a CI run failed on such a line whose 16 fractional
  digits (024809...9492) passed the Luhn check. The integer part, and every digit run
  not glued to a decimal point, is scanned.

Everything else is scanned: keys and values, header values, JSON object keys, strings
(a string that is itself JSON is walked; one that is base64, such as a dead letter's
``original``, is decoded and scanned as well as scanned as it is), and every byte of
what is not JSON (msgpack payloads, log lines).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fraudstream.wire.pan import find_pans

# 2000-01-01 .. 2100-01-01 in epoch milliseconds.
EPOCH_MS = range(946_684_800_000, 4_102_444_800_000)
# Kafka JSON fields that hold an epoch-ms time, in the worker's changelog topics: the
# dedupe table's "at" (when a decision was remembered, streams.dedupe.Remembered) and
# the reconciliation state's times (fraudstream.reconcile.state: AuthView.event_ms,
# SettlementView.at_ms, TxState.due_ms / last_ms, Snapshot.watermark_ms /
# authorizations_ms / settlements_ms).
JSON_TIME_FIELDS = frozenset(
    {"at", "event_ms", "at_ms", "due_ms", "last_ms", "watermark_ms", "authorizations_ms",
     "settlements_ms"}
)  # fmt: skip
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")


def is_redis_time_field(key: bytes, hash_field: bytes) -> bool:
    """A card hash (``<prefix>:c:<card>:h``, features/online.lua) keeps epoch-ms times in
    ``!maxt`` (newest event), ``!trim`` (trimmed up to) and ``#<device>`` (last use)."""
    return (
        b":c:" in key
        and key.endswith(b":h")
        and (hash_field in (b"!maxt", b"!trim") or hash_field.startswith(b"#"))
    )


def scan_value(data: bytes | str | None, skipped: list[str] | None = None) -> list[str]:
    """Card numbers (masked) in one stored value: JSON is walked, anything else scanned
    byte for byte. The names of the time fields left out are appended to ``skipped``."""
    if data is None:
        return []
    raw = data.encode() if isinstance(data, str) else data
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return find_pans(raw)
    if isinstance(doc, dict | list):
        return scan_json(doc, None, skipped)
    return find_pans(raw)  # a bare JSON scalar: scanned as written


def scan_json(
    doc: Any, field_name: str | None = None, skipped: list[str] | None = None
) -> list[str]:
    if isinstance(doc, dict):
        found: list[str] = []
        for key, value in doc.items():
            found += find_pans(str(key).encode())
            found += scan_json(value, str(key), skipped)
        return found
    if isinstance(doc, list):
        return [pan for item in doc for pan in scan_json(item, field_name, skipped)]
    if isinstance(doc, bool) or doc is None:
        return []
    if isinstance(doc, int):
        if field_name in JSON_TIME_FIELDS and doc in EPOCH_MS:
            if skipped is not None:
                skipped.append(field_name)
            return []
        return find_pans(str(doc).encode())
    if isinstance(doc, float):
        return find_pans(str(int(doc)).encode()) if abs(doc) < 1e20 else []
    return _scan_string(str(doc), skipped)


def _scan_string(text: str, skipped: list[str] | None) -> list[str]:
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            inner = json.loads(stripped)
        except ValueError:
            pass
        else:
            return scan_json(inner, None, skipped)
    found = find_pans(text.encode())
    if len(text) >= 16 and _BASE64.match(text):
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        found += scan_value(decoded, skipped)
    return found


@dataclass
class ScanReport:
    """Where card numbers were found, and how much was looked at."""

    found: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, where: str, pans: Iterable[str]) -> None:
        self.found += [f"{where}: {pan}" for pan in pans]

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


# The fraction of a decimal number: digits right after "<digit>." (not after a
# sentence's full stop and a space, nor a dotted group of a card number's digits).
_FRACTION = re.compile(r"(?<=\d\.)\d+")


def scan_log(text: str, name: str, report: ScanReport) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        report.add(f"{name}:{number}", find_pans(_FRACTION.sub("", line).encode()))
        report.count("log lines")


def scan_records(topic: str, records: Iterable[Any], report: ScanReport) -> None:
    """Kafka records: key, value and header values."""
    skipped: list[str] = []
    for r in records:
        where = f"{topic}[{r.partition}@{r.offset}]"
        report.add(f"{where} key", scan_value(r.key, skipped))
        report.add(f"{where} value", scan_value(r.value, skipped))
        for name, value in r.headers or ():
            report.add(f"{where} header {name}", find_pans(name.encode()) + scan_value(value))
        report.count("kafka messages")
    report.count("kafka epoch-ms time fields skipped", len(skipped))


def scan_redis(client: Any, report: ScanReport) -> None:
    """Every key of the client's database: its name and everything it holds (hash fields
    and values, set and sorted-set members, list items), but not sorted-set scores."""
    for key in client.scan_iter(count=1000):
        where = f"redis {key[:80]!r}"
        report.add(f"{where} (name)", find_pans(key))
        report.count("redis keys")
        kind = client.type(key).decode()
        if kind == "string":
            items = [client.get(key)]
        elif kind == "hash":
            items = []
            for name, value in client.hgetall(key).items():
                report.add(f"{where} field", find_pans(name))
                if is_redis_time_field(key, name) and value.isdigit() and int(value) in EPOCH_MS:
                    report.count("redis epoch-ms time fields skipped")
                    continue
                items.append(value)
        elif kind == "set":
            items = list(client.smembers(key))
        elif kind == "zset":
            items = list(client.zrange(key, 0, -1))
        elif kind == "list":
            items = list(client.lrange(key, 0, -1))
        else:
            raise AssertionError(f"{where}: a {kind} the scan does not read")
        for item in items:
            report.add(where, scan_value(item))
        report.count("redis items", len(items))
