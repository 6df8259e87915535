"""``fraudstream replay``: sources, pacing, live event times, and a real produce."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from fraudstream.settings import load_settings
from fraudstream.simulator import SimulatorConfig, generate, to_json_lines
from fraudstream.wire import transaction_decoder
from streams.kafka_config import aiokafka_kwargs
from streams.replay import Pacer, load_messages, messages_from_frame, produce, with_event_time


def small_frame(n: int = 50) -> Any:
    config = SimulatorConfig(seed=3, n_cards=60, n_terminals=40, days=1)
    return generate(config).transactions.head(n)


def test_messages_are_keyed_by_card_and_decode_as_transactions() -> None:
    frame = small_frame()
    messages = messages_from_frame(frame)
    decoded = transaction_decoder(65536).decode([value for _, value in messages])
    assert not decoded.rejected and len(decoded.items) == len(frame)
    assert [key for key, _ in messages] == [tx.card_id.encode() for tx in decoded.items]


def test_parquet_and_jsonl_sources_give_the_same_messages(tmp_path: Path) -> None:
    frame = small_frame()
    frame.to_parquet(tmp_path / "sim.parquet", index=False)
    (tmp_path / "sim.jsonl").write_bytes(b"".join(v + b"\n" for v in to_json_lines(frame)))
    from_parquet = load_messages(tmp_path / "sim.parquet", limit=20)
    from_jsonl = load_messages(tmp_path / "sim.jsonl", limit=20)
    assert from_parquet == from_jsonl and len(from_parquet) == 20
    with pytest.raises(ValueError, match=r"\.parquet or \.jsonl"):
        load_messages(tmp_path / "sim.csv")


def test_handbook_rows_become_wire_transactions() -> None:
    path = load_settings(None, {}).data.handbook_path
    if not path.exists():
        pytest.skip(f"handbook data not found at {path} (see ../shared/data/handbook/README.md)")
    messages = load_messages(path, limit=100)
    decoded = transaction_decoder(65536).decode([v for _, v in messages])
    assert not decoded.rejected
    first = decoded.items[0]
    assert first.card_id.startswith("C") and first.terminal_id.startswith("T")
    assert first.currency == "EUR"
    times = [tx.event_time for tx in decoded.items]
    assert times == sorted(times)


def test_live_mode_rewrites_only_the_event_time() -> None:
    _, value = messages_from_frame(small_frame(1))[0]
    when = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    rewritten = json.loads(with_event_time(value, when))
    original = json.loads(value)
    assert rewritten.pop("event_time") == "2030-05-06T07:08:09.123456Z"
    original.pop("event_time")
    assert rewritten == original
    assert with_event_time(b"{not json", when) == b"{not json"  # bad stays bad


def test_pacer_is_open_loop() -> None:
    now = [100.0]
    pacer = Pacer(1000.0, clock=lambda: now[0])
    assert pacer.wait_s(0) == 0.0
    assert pacer.wait_s(500) == pytest.approx(0.5)
    now[0] += 2.0  # the producer fell behind: nothing to wait for, no slowing down
    assert pacer.wait_s(1500) == 0.0
    assert Pacer(None).wait_s(10**9) == 0.0
    with pytest.raises(ValueError, match="positive"):
        Pacer(0.0)


@pytest.mark.integration
def test_produce_sends_everything_in_order_per_card(make_settings: Callable[..., Any]) -> None:
    settings = make_settings()
    messages = messages_from_frame(small_frame(300))

    async def run() -> list[bytes]:
        topic = settings.kafka.topics.transactions
        stats = await produce(settings.kafka, topic, messages, rate=3000.0)
        assert stats.sent == len(messages)
        consumer = AIOKafkaConsumer(
            topic, group_id=None, auto_offset_reset="earliest", **aiokafka_kwargs(settings.kafka)
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < len(messages):
                batch = await consumer.getmany(timeout_ms=5000)
                if not batch:
                    break
                for records in batch.values():
                    got += [r.value for r in records]
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    assert sorted(got) == sorted(v for _, v in messages)
