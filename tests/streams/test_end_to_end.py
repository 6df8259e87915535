"""The whole pipeline on the real broker, with real processes: about 20,000 simulated
transactions (and a few bad messages) through ``fraudstream worker``; its decisions
through ``fraudstream authorize``; the authorisations and the simulator's settlements
through the worker's reconciliation agent.

Every valid transaction gets exactly one decision (a redelivery may only repeat it, byte
for byte) and one authorisation, the dead-letter topic holds exactly the bad messages,
and reconciliation reports exactly the discrepancies the simulator injected (plus the
settlements of the payments the engine declined)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from fraudstream.reconcile import replay
from fraudstream.settings import Settings
from fraudstream.simulator import (
    ClearingConfig,
    SimulatedData,
    SimulatorConfig,
    expected_discrepancies,
    generate,
)
from fraudstream.wire import Authorization, Settlement, encode
from streams.replay import messages_from_frame
from streams.replay import produce as replay_produce
from streams.topics import ensure_topics
from tests.streams.harness import DELIVERY_OVERRIDES, FraudstreamProcess, consume_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SIMULATOR_NAMES = {
    "authorization_not_settled": "missing_settlement",
    "settlement_without_authorization": "unknown_authorization",
}
BAD_TRANSACTIONS = [
    b"{this is not json",
    json.dumps({"schema_version": 99, "transaction_id": "future"}).encode(),
    json.dumps({"schema_version": 1, "transaction_id": "no-card", "amount": 3.0}).encode(),
    b"x" * 70_000,
]
BAD_SETTLEMENT = json.dumps({"schema_version": 1, "settlement_id": "s-bad"}).encode()


def simulate() -> SimulatedData:
    rate = 0.002
    clearing = ClearingConfig(
        missing_rate=rate,
        amount_mismatch_rate=rate,
        currency_mismatch_rate=rate,
        duplicate_rate=rate,
        unknown_authorization_rate=rate,
    )
    return generate(
        SimulatorConfig(seed=7, n_cards=2000, n_terminals=600, days=5, clearing=clearing)
    )


def with_bad(messages: list[tuple[bytes | None, bytes]]) -> list[tuple[bytes | None, bytes]]:
    """``messages`` with the bad transactions spread through them."""
    out = list(messages)
    step = len(out) // (len(BAD_TRANSACTIONS) + 1)
    for n, bad in enumerate(BAD_TRANSACTIONS, start=1):
        out.insert(n * step, (None, bad))
    return out


def settlement_messages(data: SimulatedData) -> list[tuple[bytes | None, bytes]]:
    """The settlements in settlement-time order, each keyed by card."""
    settlements = sorted(replay.settlements(data.settlements), key=lambda s: s.settled_at)
    return [(s.card_id.encode(), encode(s)) for s in settlements]


async def move_watermarks(settings: Settings, after: pd.Timestamp) -> None:
    """One approved and captured payment per partition, far past every deadline and the
    retention: each partition's reconciler reports what it still waits for."""
    config = settings.reconciliation
    at = after.to_pydatetime() + timedelta(days=config.retention_days + 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(settings.kafka.bootstrap_servers), acks="all"
    )
    await producer.start()
    try:
        for partition in range(settings.kafka.partitions):
            tick = Authorization(
                schema_version=1,
                transaction_id=f"tick-{partition}",
                card_id=f"tick-card-{partition}",
                approved=True,
                response_code="00",
                review=False,
                timeout_default=False,
                amount=1.0,
                currency="EUR",
                decision="approve",
                score=0.0,
                model_version="tick",
                event_time=at,
                authorized_at=at,
            )
            await producer.send_and_wait(
                settings.kafka.topics.authorizations,
                encode(tick),
                key=tick.card_id.encode(),
                partition=partition,
            )
            # ... and its capture: deadlines run on the lower of the two inputs' times.
            capture = Settlement(
                schema_version=1,
                settlement_id=f"tick-{partition}",
                transaction_id=tick.transaction_id,
                card_id=tick.card_id,
                amount=1.0,
                currency="EUR",
                settled_at=at,
                kind="capture",
            )
            await producer.send_and_wait(
                settings.kafka.topics.settlements,
                encode(capture),
                key=tick.card_id.encode(),
                partition=partition,
            )
    finally:
        await producer.stop()


async def wait_until_consumed(settings: Settings, topic: str, timeout: float) -> bool:
    """Whether the worker's group committed every partition of ``topic`` up to its end
    within ``timeout`` seconds."""
    bootstrap = ",".join(settings.kafka.bootstrap_servers)
    group = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=settings.worker.app_id, enable_auto_commit=False
    )
    ends = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await group.start()
    await ends.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        end_offsets = await ends.end_offsets(tps)
        for _ in range(int(timeout / 0.5)):
            committed = [await group.committed(tp) or 0 for tp in tps]
            if all(c >= end_offsets[tp] for c, tp in zip(committed, tps, strict=True)):
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await group.stop()
        await ends.stop()


def wanted_exceptions(data: SimulatedData, declined: set[str]) -> Counter[tuple[str, str, Any]]:
    expected = expected_discrepancies(data.settlements, data.injected_discrepancies, declined)
    # A declined payment that never settles is what should happen, not a discrepancy.
    expected = expected[
        ~((expected["kind"] == "missing_settlement") & expected["transaction_id"].isin(declined))
    ]
    return Counter(
        (kind, tx, sid if isinstance(sid, str) else None)
        for kind, tx, sid in expected[["kind", "transaction_id", "settlement_id"]].itertuples(
            index=False
        )
    )


async def test_replay_decide_authorize_reconcile(
    stack: Any, make_settings: Any, engine_bundle: Path, tmp_path: Path
) -> None:
    data = simulate()
    valid_ids = set(data.transactions["transaction_id"])
    assert len(valid_ids) >= 20_000
    settings, env = make_settings(
        with_env=True,
        models__bundle_dir=str(engine_bundle),
        **DELIVERY_OVERRIDES,
        reconciliation__max_tip_share=str(data.config.clearing.max_tip_share),
    )
    env["FRAUDSTREAM__AUTHORIZE__GROUP_ID"] = f"authorize-{settings.worker.app_id}"
    topics = settings.kafka.topics
    bootstrap = stack.kafka_bootstrap
    await ensure_topics(settings.kafka)

    worker = FraudstreamProcess(["worker"], env, tmp_path / "worker.log").start()
    authorize = FraudstreamProcess(["authorize"], env, tmp_path / "authorize.log").start()
    try:
        worker.wait_for("Ready", timeout=90)
        authorize.wait_for("authorizing decisions", timeout=60)
        transactions = with_bad(messages_from_frame(data.transactions))
        await replay_produce(settings.kafka, topics.transactions, transactions)
        decided = await consume_until(
            bootstrap,
            [topics.decisions, topics.authorizations, topics.deadletter],
            lambda got: (
                len({a["transaction_id"] for a in got[topics.authorizations]}) >= len(valid_ids)
                and len(got[topics.deadletter]) >= len(BAD_TRANSACTIONS)
            ),
            timeout=180,
        )
        # Settlements only once the reconciler has read every authorisation: its
        # event-time watermark then never passes an authorisation still on its way.
        assert await wait_until_consumed(settings, topics.authorizations, timeout=120)
        settlements = settlement_messages(data)
        settlements.insert(len(settlements) // 2, (b"card-x", BAD_SETTLEMENT))
        await replay_produce(settings.kafka, topics.settlements, settlements)
        # The same for the deadlines: they move only once every settlement was read.
        assert await wait_until_consumed(settings, topics.settlements, timeout=120)
        await move_watermarks(settings, data.settlements["settled_at"].max())
        declined = {
            a["transaction_id"] for a in decided[topics.authorizations] if not a["approved"]
        }
        want = wanted_exceptions(data, declined)
        reconciled = await consume_until(
            bootstrap,
            [topics.reconciliation_exceptions, topics.deadletter],
            lambda got: (
                len(got[topics.reconciliation_exceptions]) >= sum(want.values())
                and len(got[topics.deadletter]) >= len(BAD_TRANSACTIONS) + 1
            ),
            timeout=120,
        )
    finally:
        authorize_rc = authorize.stop()
        worker_rc = worker.stop()
    assert worker_rc == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert authorize_rc == 0, (tmp_path / "authorize.log").read_text()[-3000:]
    # Its GNN refresh child included: the interpreter's exit would wait for it.
    assert worker.left_running == [], "the stopped worker left processes running"

    # Decisions: exactly one per valid transaction; a repeat may only be identical.
    by_id: dict[str, dict[str, Any]] = {}
    for d in decided[topics.decisions]:
        assert by_id.setdefault(d["transaction_id"], d) == d, "two different decisions"
    assert set(by_id) == valid_ids
    assert not any(d["timeout_default"] for d in by_id.values())

    # Authorisations: one per valid transaction, matching its decision.
    auths = Counter(a["transaction_id"] for a in decided[topics.authorizations])
    assert set(auths) == valid_ids and max(auths.values()) == 1
    assert all(
        a["decision"] == by_id[a["transaction_id"]]["decision"]
        for a in decided[topics.authorizations]
    )

    # Dead letters: exactly the bad messages, from the topic they were read from.
    letters = reconciled[topics.deadletter]
    originals = Counter((d["source_topic"], base64.b64decode(d["original"])) for d in letters)
    assert originals == Counter(
        [(topics.transactions, bad) for bad in BAD_TRANSACTIONS]
        + [(topics.settlements, BAD_SETTLEMENT)]
    )

    # Reconciliation: exactly the injected discrepancies (and declined-but-settled).
    got = Counter(
        (SIMULATOR_NAMES.get(e["kind"], e["kind"]), e["transaction_id"], e.get("settlement_id"))
        for e in reconciled[topics.reconciliation_exceptions]
    )
    assert sum(want.values()) > 0
    assert got == want
