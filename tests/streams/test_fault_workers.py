"""Workers that die or come and go while a replay runs (issue 8, items 1 and 5).

Two ``fraudstream worker`` processes of one group share the transactions topic's
partitions, ``fraudstream authorize`` turns their decisions into authorisations. One
test SIGKILLs a random worker every few seconds during a 50,000-transaction replay and
restarts it; the other starts a second worker mid-stream and stops it again (two
rebalances). Afterwards every transaction has exactly one effective decision (a
redelivery may repeat a decision, byte for byte: the worker's changelog-backed dedupe
table re-emits what it decided, it never decides again) and exactly one authorisation
(after the authorisation service's dedupe of repeated decisions), and none is missing.
The raw duplicate rate on the decisions topic is recorded as a test property.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fraudstream.devstack.testing import free_ports
from fraudstream.simulator import SimulatorConfig, generate
from streams.replay import messages_from_frame
from streams.replay import produce as replay_produce
from streams.topics import ensure_topics
from tests.streams.harness import DELIVERY_OVERRIDES, FraudstreamProcess, TopicTail
from tests.streams.test_dedupe import scrape

pytestmark = [pytest.mark.integration]

READY_S = 120.0
# Transactions per second in the kill test's replay: well under one worker's capacity,
# so the 50,000 transactions take ~60 s and the kills fall while they still arrive.
REPLAY_RATE = 800.0


@dataclass
class WorkerPool:
    """Worker processes of one group, each slot with ports and a data dir of its own
    (a restarted slot reuses its data dir, as a restarted pod would its volume)."""

    env: dict[str, str]
    logs: Path
    running: dict[int, FraudstreamProcess] = field(default_factory=dict)
    metrics_ports: dict[int, int] = field(default_factory=dict)
    starts: int = 0

    def start(self, slot: int) -> FraudstreamProcess:
        web, metrics = free_ports(2)
        self.starts += 1
        env = {
            **self.env,
            "FRAUDSTREAM__WORKER__WEB_PORT": str(web),
            "FRAUDSTREAM__WORKER__METRICS_PORT": str(metrics),
            "FRAUDSTREAM__WORKER__DATA_DIR": str(self.logs / f"data-{slot}"),
            "FRAUDSTREAM__FEATURES__LABEL_STORE_DIR": str(self.logs / f"labels-{slot}"),
        }
        log = self.logs / f"worker-{slot}-{self.starts}.log"
        process = FraudstreamProcess(["worker"], env, log).start()
        self.running[slot] = process
        self.metrics_ports[slot] = metrics
        return process

    async def start_ready(self, slot: int) -> FraudstreamProcess:
        process = self.start(slot)
        await asyncio.to_thread(process.wait_for, "Ready", READY_S)
        return process

    def stop_all(self) -> list[tuple[Path, int]]:
        return [(p.log_path, p.stop()) for p in self.running.values()]


def replay_data(count: int) -> list[tuple[bytes | None, bytes]]:
    frame = generate(SimulatorConfig(seed=23, n_cards=2500, n_terminals=700, days=12))
    frame = frame.transactions.sort_values("event_time").head(count)
    assert len(frame) == count
    return messages_from_frame(frame)


def transaction_ids(messages: list[tuple[bytes | None, bytes]]) -> set[str]:
    return {json.loads(value)["transaction_id"] for _, value in messages}


def delivery_env(make_settings: Any, engine_bundle: Path) -> tuple[Any, dict[str, str]]:
    settings, env = make_settings(
        with_env=True,
        models__bundle_dir=str(engine_bundle),
        **DELIVERY_OVERRIDES,
        # The GNN refresher is not what these tests are about; it only costs CPU here.
        models__gnn_refresh_check_s="0",
    )
    env["FRAUDSTREAM__AUTHORIZE__GROUP_ID"] = f"authorize-{settings.worker.app_id}"
    return settings, env


def assert_one_effect_each(
    received: dict[str, list[Any]], topics: Any, ids: set[str], record: Any
) -> None:
    """Exactly one distinct decision and one authorisation per transaction id."""
    decisions = received[topics.decisions]
    by_id: dict[str, dict[str, Any]] = {}
    for decision in decisions:
        first = by_id.setdefault(decision["transaction_id"], decision)
        assert first == decision, f"{decision['transaction_id']} decided twice differently"
    missing = ids - set(by_id)
    assert not missing, (
        f"{len(missing)} transactions without a decision, e.g. {sorted(missing)[:5]}"
    )
    assert set(by_id) == ids
    assert not any(d["timeout_default"] for d in by_id.values())

    authorizations = Counter(a["transaction_id"] for a in received[topics.authorizations])
    assert set(authorizations) == ids
    twice = [tx for tx, n in authorizations.items() if n > 1]
    assert not twice, f"{len(twice)} transactions authorised more than once, e.g. {twice[:5]}"
    decided = {tx: d["decision"] for tx, d in by_id.items()}
    assert all(
        a["decision"] == decided[a["transaction_id"]] for a in received[topics.authorizations]
    )

    raw_duplicates = len(decisions) - len(ids)
    record("decisions_on_topic", len(decisions))
    record("raw_duplicate_decisions", raw_duplicates)
    record("raw_duplicate_rate", round(raw_duplicates / len(ids), 5))


async def run_with_workers(
    settings: Any,
    env: dict[str, str],
    tmp_path: Path,
    messages: list[tuple[bytes | None, bytes]],
    disturb: Any,
) -> tuple[dict[str, list[Any]], WorkerPool]:
    """The replay through a pool of workers and the authorisation service, with
    ``disturb(pool, tail)`` run while it flows; everything the topics received."""
    topics = settings.kafka.topics
    await ensure_topics(settings.kafka)
    pool = WorkerPool(env, tmp_path)
    authorize = FraudstreamProcess(["authorize"], env, tmp_path / "authorize.log").start()
    tail = await TopicTail(
        ",".join(settings.kafka.bootstrap_servers), [topics.decisions, topics.authorizations]
    ).start()
    ids = transaction_ids(messages)
    try:
        await asyncio.to_thread(authorize.wait_for, "authorizing decisions", 60)
        await disturb(
            pool,
            tail,
            lambda part=messages, **pacing: replay_produce(
                settings.kafka, topics.transactions, part, **pacing
            ),
        )
        await tail.wait(
            lambda got: {a["transaction_id"] for a in got[topics.authorizations]} >= ids,
            timeout=300,
            what="an authorisation for every transaction",
        )
    finally:
        received = await tail.stop(settle_s=3.0)
        stopped = pool.stop_all()
        authorize_rc = authorize.stop()
    for log, rc in stopped:
        assert rc == 0, log.read_text()[-3000:]
    assert authorize_rc == 0, (tmp_path / "authorize.log").read_text()[-3000:]
    return received, pool


@pytest.mark.timeout(600)
async def test_a_worker_killed_every_few_seconds_loses_and_doubles_nothing(
    stack: Any, make_settings: Any, engine_bundle: Path, tmp_path: Path, record_property: Any
) -> None:
    settings, env = delivery_env(make_settings, engine_bundle)
    messages = replay_data(50_000)
    rng = random.Random(8)
    kills: list[tuple[int, int]] = []  # (slot, decisions seen when killed)

    async def kill_and_restart(pool: WorkerPool, tail: TopicTail, replay: Any) -> None:
        await asyncio.gather(pool.start_ready(0), pool.start_ready(1))
        # Paced so the stream outlasts three kills and restarts: unpaced, the surviving
        # worker could decide the whole backlog while a restart still starts up.
        producing = asyncio.ensure_future(replay(rate=REPLAY_RATE))
        decisions = settings.kafka.topics.decisions
        for _ in range(6):
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            if tail.count(decisions) >= len(messages):
                break
            slot = rng.randrange(2)
            victim = pool.running[slot]
            rc = victim.stop(signal.SIGKILL)
            assert rc == -signal.SIGKILL, (
                f"worker exited by itself ({rc}): " + (victim.log_path.read_text()[-3000:])
            )
            kills.append((slot, tail.count(decisions)))
            await pool.start_ready(slot)
        await producing

    received, pool = await run_with_workers(settings, env, tmp_path, messages, kill_and_restart)
    # The kills happened mid-stream, not before or after the work.
    assert len(kills) >= 3, kills
    assert any(0 < seen < len(messages) for _, seen in kills), kills
    record_property("kills", kills)
    assert pool.starts == 2 + len(kills)
    ids = transaction_ids(messages)
    assert_one_effect_each(received, settings.kafka.topics, ids, record_property)


@pytest.mark.timeout(420)
async def test_a_worker_joining_and_leaving_mid_stream_loses_and_doubles_nothing(
    stack: Any, make_settings: Any, engine_bundle: Path, tmp_path: Path, record_property: Any
) -> None:
    settings, env = delivery_env(make_settings, engine_bundle)
    messages = replay_data(20_000)
    decisions = settings.kafka.topics.decisions
    decided_by_second: list[float] = []
    seen_at_leave: list[int] = []  # decisions on the topic when the second worker left

    async def join_then_leave(pool: WorkerPool, tail: TopicTail, replay: Any) -> None:
        await pool.start_ready(0)
        await replay(messages[:4_000])
        await tail.wait(lambda got: len(got[decisions]) >= 2_000, 120, "2,000 decisions")
        await pool.start_ready(1)  # rebalance: the partitions are shared out again
        # The rest only now: one worker alone decides 20,000 in about the time the
        # second takes to start, and the second would join a finished stream.
        producing = asyncio.ensure_future(replay(messages[4_000:]))
        # The second worker takes part before it leaves (its own decisions counter).
        port = pool.metrics_ports[1]
        for _ in range(360):
            decided = await asyncio.to_thread(scrape, port, "fraudstream_decisions_total")
            if decided > 0:
                break
            await asyncio.sleep(0.5)
        decided_by_second.append(decided)
        seen_at_leave.append(tail.count(decisions))
        second = pool.running.pop(1)
        assert second.stop() == 0, second.log_path.read_text()[-3000:]  # rebalance again
        await producing

    received, _ = await run_with_workers(settings, env, tmp_path, messages, join_then_leave)
    assert decided_by_second and decided_by_second[0] > 0
    assert seen_at_leave and seen_at_leave[0] < len(messages), "it left a finished stream"
    ids = transaction_ids(messages)
    assert_one_effect_each(received, settings.kafka.topics, ids, record_property)
