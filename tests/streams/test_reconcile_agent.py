"""The reconciliation agent's pure parts: batches across both topics and partitions,
dead letters, write-through to the table, and a restart from the table alone."""

from __future__ import annotations

import json
import zlib
from collections import Counter
from datetime import timedelta
from typing import Any

import faust
import msgspec
import pytest

from fraudstream.reconcile import ReconcileConfig, Reconciler, replay
from fraudstream.settings import Settings, TopicSettings
from fraudstream.simulator import SimulatorConfig, generate
from fraudstream.wire import Authorization, DeadLetter, ReconciliationException, encode
from streams.reconcile import (
    Decoders,
    LatestTotals,
    PartitionReconcilers,
    TableWrite,
    meta_key,
    reconcile_batch,
    register_reconcile_agent,
    snapshot_for,
)
from streams.scoring import RawMessage
from tests.fraudstream.test_reconcile import T0, auth, stl

NAMES = TopicSettings()
CONFIG = ReconcileConfig()
PARTITIONS = 4


def as_message(event: Any, offset: int, partition: int | None = None) -> RawMessage:
    topic = NAMES.authorizations if isinstance(event, Authorization) else NAMES.settlements
    card = event.card_id
    p = zlib.crc32(card.encode()) % PARTITIONS if partition is None else partition
    return RawMessage(card.encode(), encode(event), topic, p, offset)


class FakeTable:
    """The Faust table as the agent uses it: a dict written through batch by batch."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def apply(self, writes: list[TableWrite]) -> None:
        for w in writes:
            # The changelog carries JSON: store what a recovery would read back.
            if w.value is None:
                self.data.pop(w.key, None)
            else:
                self.data[w.key] = json.loads(json.dumps(w.value))

    def reconcilers(self) -> PartitionReconcilers:
        return PartitionReconcilers(CONFIG, lambda p: snapshot_for(p, list(self.data.items())))


def decoders() -> Decoders:
    return Decoders.build(NAMES, max_message_bytes=4096)


def test_a_batch_across_both_topics_reconciles_per_partition() -> None:
    table = FakeTable()
    messages = [
        as_message(auth("tx-1"), 0, partition=1),
        as_message(stl("s-1", "tx-1", amount=150.0), 0, partition=1),
        as_message(auth("tx-2", card_id="card-2"), 1, partition=3),
        as_message(stl("s-2", "tx-2", card_id="card-2"), 1, partition=3),
    ]
    out = reconcile_batch(messages, decoders(), table.reconcilers(), T0)
    (exc_out,) = out.exceptions
    assert exc_out.key == b"card-1"
    exc = msgspec.json.decode(exc_out.value, type=ReconciliationException)
    assert (exc.kind, exc.transaction_id, exc.settlement_id) == ("amount_mismatch", "tx-1", "s-1")
    assert out.found == Counter({"amount_mismatch": 1})
    assert sorted(out.totals) == [1, 3]
    assert out.totals[3].matched == 1 and out.totals[1].matched == 0
    table.apply(out.table_writes)
    assert table.data["tx-1"]["p"] == 1 and table.data["tx-2"]["p"] == 3
    assert table.data[meta_key(1)]["totals"]["exceptions"] == {"amount_mismatch": 1}


def test_bad_messages_from_either_topic_are_dead_lettered_in_place() -> None:
    good = as_message(auth("tx-1"), 7, partition=0)
    bad_auth = RawMessage(b"card-1", b"{nope", NAMES.authorizations, 0, 8)
    bad_settlement = RawMessage(
        b"card-1", json.dumps({"schema_version": 9}).encode(), NAMES.settlements, 2, 9
    )
    out = reconcile_batch(
        [bad_settlement, good, bad_auth], decoders(), FakeTable().reconcilers(), T0
    )
    letters = [msgspec.json.decode(o.value, type=DeadLetter) for o in out.deadletters]
    assert sorted((d.source_topic, d.partition, d.offset, d.kind) for d in letters) == [
        (NAMES.authorizations, 0, 8, "malformed_json"),
        (NAMES.settlements, 2, 9, "unknown_version"),
    ]
    assert out.rejected == Counter({"malformed_json": 1, "unknown_version": 1})
    assert out.totals[0].authorizations == 1


def test_state_survives_a_restart_from_the_table_alone() -> None:
    table = FakeTable()
    first = table.reconcilers()
    out = reconcile_batch([as_message(auth("tx-1"), 0, 0)], decoders(), first, T0)
    table.apply(out.table_writes)
    # A new process: nothing in memory but what the changelog restored.
    later = as_message(stl("s-1", "tx-1", amount=100.0), 1, 0)
    dup = as_message(stl("s-2", "tx-1", amount=100.0), 2, 0)
    out = reconcile_batch([later, dup], decoders(), table.reconcilers(), T0)
    kinds = [
        msgspec.json.decode(o.value, type=ReconciliationException).kind for o in out.exceptions
    ]
    assert kinds == ["duplicate_settlement"]
    assert out.totals[0].authorizations == 1 and out.totals[0].matched == 1


def test_evicted_payments_are_deleted_from_the_table() -> None:
    table = FakeTable()
    config_days = CONFIG.retention_days
    batch = [as_message(auth("tx-1"), 0, 0), as_message(stl("s-1", "tx-1"), 1, 0)]
    table.apply(reconcile_batch(batch, decoders(), table.reconcilers(), T0).table_writes)
    assert "tx-1" in table.data
    # Event time moves on both inputs (deadlines and eviction run on the lower of the two).
    later = T0 + timedelta(days=config_days + 5)
    much_later = [
        as_message(auth("tx-9", event_time=later, authorized_at=later), 2, 0),
        as_message(stl("s-9", "tx-9", settled_at=later), 3, 0),
    ]
    writes = reconcile_batch(much_later, decoders(), table.reconcilers(), T0)
    assert TableWrite(0, "tx-1", None) in writes.table_writes
    table.apply(writes.table_writes)
    assert "tx-1" not in table.data and "tx-9" in table.data


@pytest.mark.parametrize("restart_every", [3, 17])
def test_restarts_at_batch_boundaries_change_nothing(restart_every: int) -> None:
    data = generate(SimulatorConfig(seed=3, n_cards=200, n_terminals=60, days=4))
    ids = data.transactions["transaction_id"].tolist()
    auths = replay.authorizations(data.transactions, set(ids[::40]))
    events = list(replay.in_time_order(auths, replay.settlements(data.settlements)))
    messages = [as_message(e, i) for i, e in enumerate(events)]

    reference: dict[int, Reconciler] = {}
    expected: list[tuple[str, str, str | None]] = []
    for e, m in zip(events, messages, strict=True):
        r = reference.setdefault(m.partition, Reconciler(CONFIG))
        found = r.on_authorization(e) if isinstance(e, Authorization) else r.on_settlement(e)
        expected += [(x.kind, x.transaction_id, x.settlement_id) for x in found]

    table = FakeTable()
    reconcilers = table.reconcilers()
    hooks = LatestTotals()
    got: list[tuple[str, str, str | None]] = []
    for n, start in enumerate(range(0, len(messages), 50)):
        if n % restart_every == 0:
            reconcilers = table.reconcilers()
        out = reconcile_batch(messages[start : start + 50], decoders(), reconcilers, T0)
        table.apply(out.table_writes)
        hooks.batch_reconciled(out, 50, 0.0)
        decoded = [
            msgspec.json.decode(o.value, type=ReconciliationException) for o in out.exceptions
        ]
        got += [(x.kind, x.transaction_id, x.settlement_id) for x in decoded]

    assert got and sorted(got, key=str) == sorted(expected, key=str)
    combined = hooks.combined()
    assert combined.authorizations == len(auths)
    assert combined.open == sum(r.totals.open for r in reference.values())
    assert sum(combined.exceptions.values()) == len(expected)


def test_registers_one_agent_over_both_topics_and_a_table(unit_settings: Settings) -> None:
    app = faust.App(
        "reconcile-test", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False
    )
    registered = register_reconcile_agent(
        app,
        unit_settings.kafka.topics,
        CONFIG,
        LatestTotals(),
        partitions=PARTITIONS,
        max_batch=100,
        batch_window_s=0.05,
        max_message_bytes=4096,
    )
    topics = unit_settings.kafka.topics
    assert set(registered.agent.channel.topics) == {topics.authorizations, topics.settlements}
    assert registered.agent.concurrency == 1
    assert (
        registered.table.changelog_topic.get_topic_name()
        == "reconcile-test-reconcile-state-changelog"
    )


# --- on the real broker ---------------------------------------------------------------

WORKER = """
import os
import faust
from fraudstream.reconcile import ReconcileConfig
from fraudstream.settings import load_settings
from streams.app import create_app
from streams.reconcile import LatestTotals, register_reconcile_agent

settings = load_settings(None, os.environ)
app = create_app(settings)


class Printing(LatestTotals):
    def batch_reconciled(self, outcome, size, seconds):
        super().batch_reconciled(outcome, size, seconds)
        t = self.combined()
        print(f"RECONCILED auth={t.authorizations} stl={t.settlements}", flush=True)


register_reconcile_agent(
    app, settings.kafka.topics, ReconcileConfig(), Printing(),
    partitions=settings.kafka.partitions, max_batch=500, batch_window_s=0.05,
    max_message_bytes=settings.kafka.max_message_bytes,
)
faust.Worker(app, loglevel="INFO").execute_from_commandline()
"""


def _worker(env: dict[str, str], log: Any) -> Any:
    import subprocess
    import sys

    from tests.streams.harness import REPO, FraudstreamProcess

    class ReconcileWorker(FraudstreamProcess):
        def start(self) -> ReconcileWorker:
            import threading

            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, "worker"],
                cwd=REPO,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            threading.Thread(target=self._pump, daemon=True).start()
            return self

    return ReconcileWorker([], env, log).start()


async def _send(
    bootstrap: str, topic: str, events: list[Any], partition: int | None = None
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, encode(e), key=e.card_id.encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.integration
async def test_reconciles_on_the_broker_across_a_restart(make_settings: Any, tmp_path: Any) -> None:
    from fraudstream.simulator import expected_discrepancies
    from streams.topics import ensure_topics
    from tests.streams.harness import consume_until

    settings, env = make_settings(with_env=True)
    kafka, topics = settings.kafka, settings.kafka.topics
    await ensure_topics(kafka)
    bootstrap = ",".join(kafka.bootstrap_servers)
    data = generate(SimulatorConfig(seed=9, n_cards=150, n_terminals=50, days=3))
    ids = data.transactions["transaction_id"].tolist()
    declined = set(ids[::25])
    auths = replay.authorizations(data.transactions, declined)
    stls = sorted(
        replay.settlements(data.settlements), key=lambda s: (s.settled_at, s.settlement_id)
    )
    expected = expected_discrepancies(data.settlements, data.injected_discrepancies, declined)
    expected = expected[
        ~((expected["kind"] == "missing_settlement") & expected["transaction_id"].isin(declined))
    ]
    names = {"missing_settlement": "authorization_not_settled",
             "unknown_authorization": "settlement_without_authorization"}  # fmt: skip
    want = sorted(
        (names.get(k, k), t, s if isinstance(s, str) else None)
        for k, t, s in expected[["kind", "transaction_id", "settlement_id"]].itertuples(index=False)
    )

    # Authorisations first; the worker then stops and a new one recovers from the table.
    worker = _worker(env, tmp_path / "worker-1.log")
    try:
        worker.wait_for("Ready", timeout=90)
        await _send(bootstrap, topics.authorizations, auths)
        worker.wait_for(f"RECONCILED auth={len(auths)} ", timeout=90)
    finally:
        assert worker.stop() is not None
    worker = _worker(env, tmp_path / "worker-2.log")
    try:
        worker.wait_for("Ready", timeout=90)
        await _send(bootstrap, topics.settlements, stls)
        # One payment far in the future per partition, authorised and captured, moves
        # both inputs' event time (deadlines run on the lower) past every deadline; it
        # matches itself, so it reports nothing.
        future = T0 + timedelta(days=400)
        for p in range(kafka.partitions):
            card = f"sentinel-card-{p}"
            paid = auth(f"sentinel-{p}", card_id=card, event_time=future, authorized_at=future)
            captured = stl(f"sentinel-{p}", f"sentinel-{p}", card_id=card, settled_at=future)
            await _send(bootstrap, topics.authorizations, [paid], partition=p)
            await _send(bootstrap, topics.settlements, [captured], partition=p)
        received = await consume_until(
            bootstrap,
            [topics.reconciliation_exceptions],
            lambda r: len(r[topics.reconciliation_exceptions]) >= len(want),
            timeout=120,
        )
    finally:
        worker.stop()
    got = sorted(
        (e["kind"], e["transaction_id"], e.get("settlement_id"))
        for e in received[topics.reconciliation_exceptions]
    )
    assert got == want
