"""No card number in clear anywhere after a replay (PCI DSS 3.4).

A simulated stream whose transactions carry a clear ``card_number`` (Luhn-valid, 13 to
19 digits, plain or grouped) goes in three ways: through ``fraudstream replay`` (which
tokenizes before producing), straight onto the transactions topic as an upstream system
would send it, and as malformed messages holding card numbers (which must be
dead-lettered with the numbers replaced). A real ``fraudstream worker`` decides, a real
``fraudstream authorize`` authorizes; then every log line, every message (key, value,
headers) of every topic of the test but the input, Faust's changelogs included, and
everything the test's Redis database holds are scanned (see ``pan_scan`` for what the
scan reads and the two positions it leaves out).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fraudstream.simulator import SimulatorConfig, generate
from fraudstream.wire.pan import PanTokenizer, find_pans, is_pan, luhn_valid
from streams.replay import messages_from_frame
from streams.topics import ensure_topics
from tests.streams.harness import DELIVERY_OVERRIDES, FraudstreamProcess, consume_until, produce
from tests.streams.pan_scan import ScanReport, scan_log, scan_records, scan_redis

pytestmark = pytest.mark.timeout(600)

PAN_KEY = "pan-token-key-for-the-scan-test-0123456789"
# (prefix, length): Visa, Mastercard, Amex, Diners, 13- and 19-digit Visa, Discover.
BRANDS = [("4", 16), ("51", 16), ("37", 15), ("36", 14), ("4", 13), ("4", 19), ("6011", 16)]


def card_number(card_id: str, n: int) -> str:
    """A Luhn-valid number for ``card_id``, written plainly, in groups of four separated
    by spaces, or by hyphens."""
    prefix, length = BRANDS[n % len(BRANDS)]
    seed = int(hashlib.sha256(card_id.encode()).hexdigest(), 16)
    body = (prefix + str(seed))[: length - 1]
    digits = next(body + d for d in "0123456789" if luhn_valid(body + d))
    assert is_pan(digits)
    groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    return [digits, " ".join(groups), "-".join(groups)][n % 3]


def with_card_numbers(messages: list[tuple[bytes | None, bytes]]) -> list[bytes]:
    """The simulator's messages as an upstream sends them: a ``card_number`` instead of
    a ``card_id`` (one number per simulated card)."""
    cards: dict[str, str] = {}
    out = []
    for _, value in messages:
        doc = json.loads(value)
        card = doc.pop("card_id")
        doc["card_number"] = cards.setdefault(card, card_number(card, len(cards)))
        out.append(json.dumps(doc).encode())
    return out


MALFORMED = [
    # truncated JSON
    b'{"schema_version":1,"transaction_id":"bad-1","card_number":"4111111111111111","amo',
    # a schema violation (amount is text) with a grouped number
    json.dumps(
        {"schema_version": 1, "transaction_id": "bad-2", "card_number": "5555 5555 5555 4444",
         "event_time": "2025-01-01T00:00:00Z", "terminal_id": "T1", "amount": "a lot",
         "currency": "EUR"}
    ).encode(),
    # a number in a field that is not on the wire
    json.dumps(
        {"schema_version": 1, "transaction_id": "bad-3", "card_id": "c-1",
         "event_time": "2025-01-01T00:00:00Z", "terminal_id": "T1", "amount": 1.0,
         "currency": "EUR", "note": "paid with 4012-8888-8888-1881"}
    ).encode(),
    # a schema version this build does not know
    json.dumps({"schema_version": 99, "card_number": "378282246310005"}).encode(),
    # a card number as a JSON number
    b'{"schema_version":1,"transaction_id":"bad-5","card_number":6011111111111117}',
    # oversize
    b'{"card_number":"3530111333300000","pad":"' + b"x" * 70_000 + b'"}',
]  # fmt: skip


async def our_topics(bootstrap: str, suffix: str) -> dict[str, list[int]]:
    """Every topic whose name holds ``suffix`` (the test's topics and its worker's
    Faust topics), with its partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if suffix in t)
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described}


async def read_topics(bootstrap: str, topics: dict[str, list[int]]) -> dict[str, list[Any]]:
    """Every record of ``topics``, from the beginning to the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, partitions in topics.items() for p in partitions]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[str, list[Any]] = {t: [] for t in topics}
        waiting = {tp for tp in tps if ends[tp] > 0}
        while waiting:
            for tp, records in (await consumer.getmany(timeout_ms=2000)).items():
                out[tp.topic] += records
                if records and records[-1].offset + 1 >= ends[tp]:
                    waiting.discard(tp)
        return out
    finally:
        await consumer.stop()


async def test_no_clear_card_number_in_logs_topics_or_redis_after_a_replay(
    stack: Any,
    make_settings: Any,
    engine_bundle: Path,
    redis_client: Any,
    tmp_path: Path,
) -> None:
    redis = redis_client()  # flushes the session's database: only this test's keys
    settings, env = make_settings(
        with_env=True,
        models__bundle_dir=str(engine_bundle),
        security__pan_token_key=PAN_KEY,
        **DELIVERY_OVERRIDES,
    )
    env["FRAUDSTREAM__AUTHORIZE__GROUP_ID"] = f"authorize-{settings.worker.app_id}"
    topics = settings.kafka.topics
    bootstrap = stack.kafka_bootstrap
    await ensure_topics(settings.kafka)

    frame = generate(SimulatorConfig(seed=11, n_cards=80, n_terminals=40, days=2)).transactions
    values = with_card_numbers(messages_from_frame(frame))
    replayed, direct = values[: len(values) * 2 // 3], values[len(values) * 2 // 3 :]
    assert len(direct) >= 50
    # The input holds card numbers (so the scan below can fail): one per transaction,
    # and one per malformed message.
    assert all(len(find_pans(v)) == 1 for v in [*values, *MALFORMED])
    jsonl = tmp_path / "replay.jsonl"
    jsonl.write_bytes(b"\n".join(replayed) + b"\n")

    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "authorize", "replay")}
    worker = FraudstreamProcess(["worker"], env, logs["worker"]).start()
    authorize = FraudstreamProcess(["authorize"], env, logs["authorize"]).start()
    try:
        worker.wait_for("Ready", timeout=120)
        authorize.wait_for("authorizing decisions", timeout=60)
        replay = FraudstreamProcess(["replay", "--data", str(jsonl)], env, logs["replay"])
        replayed_proc = replay.start().proc
        assert replayed_proc is not None
        assert replayed_proc.wait(180) == 0, logs["replay"].read_text()[-3000:]
        await produce(bootstrap, topics.transactions, [(None, v) for v in direct])
        await produce(bootstrap, topics.transactions, [(None, v) for v in MALFORMED])
        got = await consume_until(
            bootstrap,
            [topics.decisions, topics.authorizations, topics.deadletter],
            lambda r: (
                len({a["transaction_id"] for a in r[topics.authorizations]}) >= len(values)
                and len(r[topics.deadletter]) >= len(MALFORMED)
            ),
            timeout=240,
        )
    finally:
        authorize_rc = authorize.stop()
        worker_rc = worker.stop()
    assert worker_rc == 0, logs["worker"].read_text()[-3000:]
    assert authorize_rc == 0, logs["authorize"].read_text()[-3000:]

    # Everything went through: one decision and one authorization per transaction, the
    # card id of each the keyed token of its number, each malformed message
    # dead-lettered once.
    tokens = PanTokenizer(PAN_KEY.encode())
    ids = {json.loads(v)["transaction_id"] for v in values}
    assert {d["transaction_id"] for d in got[topics.decisions]} == ids
    assert {a["transaction_id"] for a in got[topics.authorizations]} == ids
    assert len(got[topics.deadletter]) == len(MALFORMED)
    wanted_cards = {tokens.token(json.loads(v)["card_number"]) for v in values}
    assert {d["card_id"] for d in got[topics.decisions]} == wanted_cards

    report = ScanReport()
    for name, path in logs.items():
        scan_log(path.read_text(), name, report)
    ours = await our_topics(bootstrap, topics.transactions.rsplit(".", 1)[1])
    assert {topics.decisions, topics.authorizations, topics.deadletter} <= set(ours)
    assert any(t.endswith("-changelog") for t in ours), ours
    records = await read_topics(bootstrap, ours)
    # Self-check on the input topic: the scan finds exactly the card numbers sent to it
    # in clear (the direct and malformed messages), none of the replayed ones.
    source = ScanReport()
    scan_records(topics.transactions, records.pop(topics.transactions), source)
    assert len(source.found) == len(direct) + len(MALFORMED), source.counts
    for topic, topic_records in records.items():
        scan_records(topic, topic_records, report)
        report.count("topics")
    scan_redis(redis, report)
    report.count("card numbers in the input", len(values) + len(MALFORMED))
    print(f"\ncard-number scan: {report.counts}; topics: {sorted(records)}")
    assert report.counts["redis keys"] > 0 and report.counts["kafka messages"] >= 2 * len(ids)
    assert not report.found, "\n".join(report.found[:50])
    # Dead letters keep the original bytes, with each number replaced by its token.
    originals = [base64.b64decode(d["original"]) for d in got[topics.deadletter]]
    assert all(b"tok_" in o and not find_pans(o) for o in originals)


def test_a_dead_letter_keyed_by_a_card_number_does_not_keep_it() -> None:
    from datetime import UTC, datetime

    from fraudstream.wire import transaction_decoder
    from fraudstream.wire.pan import CardNumberIngress
    from streams.scoring import RawMessage, decode_batch

    decoder = transaction_decoder(65_536, CardNumberIngress.from_key(PAN_KEY.encode()))
    message = RawMessage(b"4111111111111111", MALFORMED[0], "transactions", 0, 1)
    outcome, _ = decode_batch([message], decoder, datetime.now(UTC))
    (letter,) = outcome.deadletters
    assert not find_pans(letter.value)
    assert not find_pans(letter.key or b"")
    assert letter.key == b"411111******1111"  # masked: the last line, keyless
