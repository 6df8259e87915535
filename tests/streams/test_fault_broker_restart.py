"""The Kafka broker goes down mid-replay and comes back on the same data directory.

A worker (``fraudstream worker``) and the authorization service (``fraudstream
authorize``) process a simulated replay of a few thousand transactions on a broker of
the test's own; while they are busy the broker is stopped (SIGTERM: a controlled
shutdown, or SIGKILL: a crash) and started again. Afterwards nothing is lost (every
valid transaction has a decision and an authorisation) and nothing is acted on twice:
one distinct decision per transaction (a redelivered copy is byte-identical, the worker
dedupes by transaction id through its changelog-backed table) and one authorisation per
transaction after the authorization service's dedupe by transaction id. The raw copies
found on the topics are reported.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streams.replay import produce as replay_produce
from streams.topics import ensure_topics
from tests.streams.harness import DELIVERY_OVERRIDES, consume_until, simulated_replay
from tests.streams.private_stack import log_tail, private_stack, running
from tests.streams.test_dedupe import scrape, wait_for_metric

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# (signal, seconds the broker stays down): short, and longer than the consumer groups'
# session timeout (10 s for the worker and the authorization service).
OUTAGES = [(signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0), (signal.SIGKILL, 15.0)]


def duplicates(ids: list[str]) -> int:
    """How many messages repeat a transaction id already seen."""
    return len(ids) - len(set(ids))


@pytest.mark.parametrize(
    ("sig", "outage_s"), OUTAGES, ids=[f"{s.name.lower()}-{t:.0f}s" for s, t in OUTAGES]
)
async def test_broker_restart_mid_replay_loses_nothing_and_acts_once(
    sig: signal.Signals, outage_s: float, engine_bundle: Path, tmp_path: Path
) -> None:
    began = time.monotonic()
    messages, ordered_ids = simulated_replay(seed=11)
    valid_ids = set(ordered_ids)
    half = len(messages) // 2

    with private_stack(tmp_path / "stack") as broker:
        settings, env = broker.env(
            tmp_path,
            models__bundle_dir=str(engine_bundle),
            **DELIVERY_OVERRIDES,
        )
        topics = settings.kafka.topics
        port = settings.worker.metrics_port
        await ensure_topics(settings.kafka)
        worker_log, authorize_log = tmp_path / "worker.log", tmp_path / "authorize.log"
        with (
            running(["worker"], env, worker_log) as worker,
            running(["authorize"], env, authorize_log) as authorize,
        ):
            worker.wait_for("Ready", timeout=120)
            authorize.wait_for("authorizing decisions", timeout=60)
            await replay_produce(settings.kafka, topics.transactions, messages[:half])
            # Mid-replay: some of the first half decided, the rest still to come.
            decided_at_stop = await wait_for_metric(
                port, "fraudstream_decisions_total", half // 4, timeout=120
            )
            old_pid = broker.pid("kafka")
            stop_s = await asyncio.to_thread(broker.kill, "kafka", sig)
            await asyncio.sleep(outage_s)
            restart_s = await asyncio.to_thread(broker.restart)
            assert broker.pid("kafka") != old_pid
            await replay_produce(settings.kafka, topics.transactions, messages[half:])
            got = await consume_until(
                broker.bootstrap,
                [topics.decisions, topics.authorizations],
                lambda got: (
                    len({a["transaction_id"] for a in got[topics.authorizations]}) >= len(valid_ids)
                ),
                timeout=180,
            )
            if len({a["transaction_id"] for a in got[topics.authorizations]}) < len(valid_ids):
                worker.dump_stacks()  # where it is stuck, into its log for the report
            decided_total = scrape(port, "fraudstream_decisions_total")
            hits = scrape(port, "fraudstream_dedupe_hits_total")
            authorize_rc = authorize.stop()
            worker_rc = worker.stop()

    decisions: list[dict[str, Any]] = got[topics.decisions]
    authorizations: list[dict[str, Any]] = got[topics.authorizations]
    decision_dupes = duplicates([d["transaction_id"] for d in decisions])
    auth_dupes = duplicates([a["transaction_id"] for a in authorizations])
    report = (
        f"{sig.name}: {len(valid_ids)} transactions, broker stopped after "
        f"{decided_at_stop:.0f} decisions (stop {stop_s:.1f} s, down {outage_s:.0f} s, "
        f"restart {restart_s:.1f} s); {len(decisions)} decisions on the topic "
        f"({decision_dupes} duplicates), {len(authorizations)} authorisations "
        f"({auth_dupes} duplicates); worker: {decided_total:.0f} decided, "
        f"{hits:.0f} dedupe hits; {time.monotonic() - began:.0f} s"
    )
    print(report)
    assert worker_rc == 0, f"{report}\n{log_tail(worker_log)}"
    assert authorize_rc == 0, f"{report}\n{log_tail(authorize_log)}"

    # Decisions: every valid transaction decided; a repeat may only be byte-identical
    # (the JSON decoded equal, decided_at included): never decided twice.
    by_id: dict[str, dict[str, Any]] = {}
    for d in decisions:
        assert by_id.setdefault(d["transaction_id"], d) == d, f"two decisions: {report}"
    assert set(by_id) == valid_ids, f"{len(valid_ids - set(by_id))} lost: {report}"
    assert not any(d["timeout_default"] for d in by_id.values()), report

    # Authorisations: every transaction authorised, matching its decision, and exactly
    # once on the topic: a decision delivered again is dropped by the service's dedupe
    # by transaction id (it ran throughout), and its idempotent producer's retries by
    # the broker.
    auths = Counter(a["transaction_id"] for a in authorizations)
    assert set(auths) == valid_ids, f"{len(valid_ids - set(auths))} unauthorised: {report}"
    assert auth_dupes == 0, report
    assert all(a["decision"] == by_id[a["transaction_id"]]["decision"] for a in authorizations)
