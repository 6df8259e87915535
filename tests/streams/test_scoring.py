from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest

from fraudstream.wire import DeadLetter, Decision, Transaction, transaction_decoder
from streams.scoring import PlaceholderPipeline, RawMessage, process_batch

NOW = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)


def message(offset: int, value: bytes | None, key: bytes | None = b"card") -> RawMessage:
    return RawMessage(key=key, value=value, topic="transactions", partition=2, offset=offset)


def tx_bytes(tx_id: str, card: str = "c1") -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "transaction_id": tx_id,
            "event_time": "2025-03-01T12:00:00Z",
            "card_id": card,
            "terminal_id": "t1",
            "amount": 10.0,
            "currency": "EUR",
        }
    ).encode()


class RecordingPipeline:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        self.seen += [t.transaction_id for t in transactions]
        return PlaceholderPipeline().decide(transactions, now)


def test_one_decision_per_valid_message_in_order_keyed_by_card() -> None:
    pipeline = RecordingPipeline()
    batch = [message(i, tx_bytes(f"t{i}", card=f"c{i % 3}")) for i in range(10)]
    outcome = process_batch(batch, transaction_decoder(4096), pipeline, NOW)
    decoded = [msgspec.json.decode(o.value, type=Decision) for o in outcome.decisions]
    assert [d.transaction_id for d in decoded] == [f"t{i}" for i in range(10)]
    assert [o.key for o in outcome.decisions] == [f"c{i % 3}".encode() for i in range(10)]
    assert pipeline.seen == [f"t{i}" for i in range(10)]
    assert outcome.outcomes == {"approve": 10}
    assert decoded[0].latency_ms == pytest.approx(5000.0)


def test_bad_messages_become_dead_letters_with_original_bytes_and_position() -> None:
    bad = [b"{", json.dumps({"schema_version": 7}).encode(), b"\xff\xfe"]
    batch = [message(0, tx_bytes("ok"))] + [message(i + 1, b, key=None) for i, b in enumerate(bad)]
    outcome = process_batch(batch, transaction_decoder(4096), RecordingPipeline(), NOW)
    assert len(outcome.decisions) == 1
    letters = [msgspec.json.decode(o.value, type=DeadLetter) for o in outcome.deadletters]
    assert [letter.original for letter in letters] == bad
    assert [letter.offset for letter in letters] == [1, 2, 3]
    assert {letter.partition for letter in letters} == {2}
    assert [letter.kind for letter in letters] == [
        "malformed_json",
        "unknown_version",
        "malformed_json",
    ]
    assert outcome.rejected == {"malformed_json": 2, "unknown_version": 1}


def test_all_bad_batch_never_calls_the_pipeline() -> None:
    pipeline = RecordingPipeline()
    outcome = process_batch([message(0, b"nope")], transaction_decoder(4096), pipeline, NOW)
    assert pipeline.seen == [] and not outcome.decisions and len(outcome.deadletters) == 1


def test_a_pipeline_that_drops_a_decision_is_a_bug_not_a_silent_loss() -> None:
    class Lossy(RecordingPipeline):
        def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
            return super().decide(transactions, now)[:-1]

    with pytest.raises(AssertionError):
        process_batch(
            [message(0, tx_bytes("a")), message(1, tx_bytes("b"))],
            transaction_decoder(4096),
            Lossy(),
            NOW,
        )
