"""The card-number scan of test_no_card_numbers finds what it must (so its silence
means something) and leaves out only fractions and known epoch-ms time fields."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from tests.streams.pan_scan import (
    ScanReport,
    scan_json,
    scan_log,
    scan_records,
    scan_redis,
    scan_value,
)

PAN = "4111111111111111"
MASKED = "411111******1111"
EPOCH_MS_LUHN = 1735694324187  # an event time that happens to pass the Luhn check
LUHN_TIME_MASKED = "173569***4187"


def test_card_numbers_are_found_wherever_they_sit_in_json() -> None:
    assert scan_value(json.dumps({"card_number": PAN})) == [MASKED]
    assert scan_value(json.dumps({"n": int(PAN)})) == [MASKED]  # a JSON number
    assert scan_value(json.dumps({"n": float(PAN)})) == [MASKED]  # 4111111111111111.0
    assert scan_value(json.dumps({PAN: 1})) == [MASKED]  # an object key
    assert scan_value(json.dumps({"note": "card 4111 1111 1111 1111"})) == [MASKED]
    nested = json.dumps({"d": json.dumps({"x": [{"card": f"{PAN[:8]}-{PAN[8:]}"}]})})
    assert scan_value(nested) == [MASKED]  # JSON inside a string is walked
    original = base64.b64encode(b'{"card_number":"' + PAN.encode() + b'","amo').decode()
    assert scan_value(json.dumps({"original": original})) == [MASKED]  # base64 decoded
    assert scan_value(b"\x92\xcd\x01\x02\xb0" + PAN.encode()) == [MASKED]  # msgpack str
    assert scan_value(PAN) == [MASKED]  # a bare value


def test_only_fractions_and_known_time_fields_are_left_out() -> None:
    assert scan_value(json.dumps({"score": 0.4111111111111111})) == []  # a fraction
    skipped: list[str] = []
    doc = {
        "due_ms": EPOCH_MS_LUHN,
        "auth": {"event_ms": EPOCH_MS_LUHN},
        "d": json.dumps({"at": EPOCH_MS_LUHN}),
    }
    assert scan_json(doc, None, skipped) == []
    assert sorted(skipped) == ["at", "due_ms", "event_ms"]
    # The same number in any other field, or bare, is flagged; so is a time field
    # holding what cannot be an epoch-ms time of this century.
    assert scan_value(json.dumps({"amount": EPOCH_MS_LUHN})) == [LUHN_TIME_MASKED]
    assert scan_value(str(EPOCH_MS_LUHN)) == [LUHN_TIME_MASKED]
    assert scan_value(json.dumps({"due_ms": int(PAN)})) == [MASKED]


def _kafka_record(key: bytes | None, value: bytes, headers: Any = ()) -> Any:
    return SimpleNamespace(key=key, value=value, headers=list(headers), partition=0, offset=7)


def test_records_and_logs_are_scanned_whole() -> None:
    report = ScanReport()
    scan_records(
        "t",
        [
            _kafka_record(PAN.encode(), b"{}"),
            _kafka_record(None, b"not json " + PAN.encode()),
            _kafka_record(None, b"{}", [("pan", PAN.encode())]),
        ],
        report,
    )
    scan_log(f"ok\nrejected {PAN} at 12:00\n", "worker", report)
    # A float's fraction in a log line is left out (Faust: "runtime=2.4111111111111111"),
    # not the integer part of a number, nor a number after a sentence's full stop.
    scan_log(f"overlapping (runtime=2.{PAN})\nruntime={PAN}.25 after 1. {PAN}\n", "w", report)
    assert report.found == [
        f"t[0@7] key: {MASKED}",
        f"t[0@7] value: {MASKED}",
        f"t[0@7] header pan: {MASKED}",
        f"worker:2: {MASKED}",
        f"w:2: {MASKED}",
        f"w:2: {MASKED}",
    ]
    assert report.counts == {
        "kafka messages": 3,
        "kafka epoch-ms time fields skipped": 0,
        "log lines": 4,
    }


def test_everything_redis_holds_is_scanned_but_scores_and_card_hash_times(
    redis_client: Callable[..., Any],
) -> None:
    r = redis_client()  # flushed: this test's keys only
    r.set(f"fs:s:{PAN}", "x")  # in a key name
    r.hset("fs:c:tok_a:h", mapping={"!maxt": EPOCH_MS_LUHN, "#dev_1": EPOCH_MS_LUHN})
    r.hset("fs:c:tok_a:h", mapping={"tx_1": b"\x93\x01\x02\xb0" + PAN.encode()})  # value
    r.hset("fs:c:tok_b:h", mapping={PAN: "1"})  # a hash field
    r.hset("fs:m:5912", mapping={"n:20089": EPOCH_MS_LUHN})  # not a card hash: scanned
    r.sadd("fs:set", PAN)
    r.zadd("fs:z", {PAN: 1.0, "tx_2": float(EPOCH_MS_LUHN)})  # member yes, score no
    r.rpush("fs:list", "a", PAN)
    report = ScanReport()
    scan_redis(r, report)
    places = sorted(f.split(": ")[0] for f in report.found)
    assert places == sorted(
        [
            f"redis b'fs:s:{PAN}' (name)",
            "redis b'fs:c:tok_a:h'",
            "redis b'fs:c:tok_b:h' field",
            "redis b'fs:m:5912'",
            "redis b'fs:set'",
            "redis b'fs:z'",
            "redis b'fs:list'",
        ]
    )
    assert report.counts["redis epoch-ms time fields skipped"] == 2
