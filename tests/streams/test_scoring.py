from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import pytest

from fraudstream.errors import FeatureStoreUnavailable
from fraudstream.wire import (
    BatchDecoder,
    DeadLetter,
    Decision,
    LabelEvent,
    Transaction,
    transaction_decoder,
)
from streams.scoring import (
    DeadlineDecider,
    PlaceholderPipeline,
    RawMessage,
    decode_labels,
    process_batch,
    process_batch_within,
)

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


# --- the deadline around a blocking pipeline ------------------------------------------


def fallback(transactions: Sequence[Transaction], now: datetime, timed_out: bool) -> list[Decision]:
    decisions = PlaceholderPipeline().decide(transactions, now)
    return [
        msgspec.structs.replace(d, model_version="fallback", timeout_default=timed_out)
        for d in decisions
    ]


def transactions(*ids: str) -> list[Transaction]:
    return [msgspec.json.decode(tx_bytes(i), type=Transaction) for i in ids]


class BlockingPipeline(RecordingPipeline):
    """Blocks in decide until released; counts how many decide at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.release.wait()
        with self._lock:
            self.running -= 1
        return super().decide(transactions, now)


async def test_a_pipeline_past_the_deadline_gets_the_timeout_default_and_never_overlaps() -> None:
    pipeline = BlockingPipeline()
    decider = DeadlineDecider(pipeline, timeout_s=0.05, fallback=fallback)
    late = await decider.decide(transactions("a", "b"), NOW)
    assert [(d.transaction_id, d.model_version, d.timeout_default) for d in late] == [
        ("a", "fallback", True),
        ("b", "fallback", True),
    ]
    pipeline.release.set()  # the late batch finishes; the next one waits for it first
    decider.timeout_s = 60.0  # (and a loaded machine must not make the next one late too)
    decisions = await decider.decide(transactions("c"), NOW)
    assert [(d.transaction_id, d.model_version) for d in decisions] == [("c", "placeholder")]
    assert pipeline.seen == ["a", "b", "c"]
    assert pipeline.most_at_once == 1


async def test_a_pipeline_that_raises_gets_the_error_default_and_is_reported() -> None:
    class Broken(RecordingPipeline):
        def decide(self, transactions: Sequence[Transaction], now: datetime) -> list[Decision]:
            raise RuntimeError("boom")

    errors: list[BaseException] = []
    decider = DeadlineDecider(Broken(), timeout_s=30.0, fallback=fallback, on_error=errors.append)
    decisions = await decider.decide(transactions("a"), NOW)
    assert [(d.model_version, d.timeout_default) for d in decisions] == [("fallback", False)]
    assert [str(e) for e in errors] == ["boom"]


async def test_process_batch_within_decides_through_the_decider_and_counts() -> None:
    decider = DeadlineDecider(RecordingPipeline(), timeout_s=30.0, fallback=fallback)
    batch = [message(0, tx_bytes("a")), message(1, b"{"), message(2, tx_bytes("b"))]
    outcome = await process_batch_within(batch, transaction_decoder(4096), decider, NOW)
    decoded = [msgspec.json.decode(o.value, type=Decision) for o in outcome.decisions]
    assert [d.transaction_id for d in decoded] == ["a", "b"]
    assert outcome.rejected == {"malformed_json": 1}
    # The placeholder says it is degraded; nothing timed out.
    assert (outcome.degraded, outcome.timeout_defaults) == (2, 0)


# --- the labels topic -------------------------------------------------------------------


def label_bytes(tx_id: str, is_fraud: bool = True) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "transaction_id": tx_id,
            "card_id": "c1",
            "terminal_id": "t1",
            "event_time": "2025-03-01T12:00:00Z",
            "label_time": "2025-03-09T12:00:00Z",
            "is_fraud": is_fraud,
            "source": "chargeback",
        }
    ).encode()


def test_labels_are_decoded_and_bad_ones_dead_lettered_with_their_position() -> None:
    decoder = BatchDecoder(LabelEvent, max_bytes=4096)
    batch = [
        message(0, label_bytes("a")),
        message(1, tx_bytes("not-a-label")),
        message(2, label_bytes("b", is_fraud=False)),
        message(3, None),
    ]
    outcome = decode_labels(batch, decoder, NOW)
    assert [(x.transaction_id, x.is_fraud) for x in outcome.labels] == [("a", True), ("b", False)]
    letters = [msgspec.json.decode(o.value, type=DeadLetter) for o in outcome.deadletters]
    assert [(x.offset, x.kind) for x in letters] == [(1, "schema_violation"), (3, "malformed_json")]
    assert outcome.rejected == {"schema_violation": 1, "malformed_json": 1}


async def test_labels_are_retried_until_the_store_takes_them() -> None:
    from streams.agents import _apply_until_done

    calls: list[int] = []

    def flaky(labels: Sequence[LabelEvent]) -> int:
        calls.append(len(labels))
        if len(calls) < 3:
            raise FeatureStoreUnavailable("connection refused")
        return len(labels)

    labels = decode_labels([message(0, label_bytes("a"))], BatchDecoder(LabelEvent, max_bytes=4096))
    assert await _apply_until_done(flaky, labels.labels, retry_s=0.0) == 1
    assert calls == [1, 1, 1]
