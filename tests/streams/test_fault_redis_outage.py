"""Redis hangs, then dies, mid-replay, and comes back (empty) on the same port.

A worker (``fraudstream worker``) decides a simulated replay of a few thousand
transactions on a stack of the test's own. Part way through, Redis is frozen (SIGSTOP:
connections are accepted, nothing answers), then killed (connections refused), then
started again on the same port with none of its data. Decisions never stop: while Redis
is out they are made on transaction-only features and flagged ``degraded``, within the
feature store's timeout (none becomes a deadline default); once Redis answers again
they are not degraded any more. Nothing is lost or decided twice: the worker's dedupe
state lives in Kafka (a changelog-backed table), not in Redis.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from streams.replay import produce as replay_produce
from streams.topics import ensure_topics
from tests.streams.harness import DELIVERY_OVERRIDES, consume_until, simulated_replay
from tests.streams.private_stack import log_tail, metric_samples, private_stack, running
from tests.streams.test_dedupe import scrape, wait_for_metric

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# The feature store (and the rules' list lookups, on the same client) give up after
# this; the deadline stays generous so that only Redis can degrade a decision.
STORE_TIMEOUT_MS = "500"


async def test_decisions_continue_degraded_while_redis_is_out_and_recover_after(
    engine_bundle: Path, tmp_path: Path
) -> None:
    began = time.monotonic()
    messages, ordered_ids = simulated_replay(seed=13)
    valid_ids = set(ordered_ids)
    q = len(messages) // 4
    bounds = [(0, q), (q, 2 * q), (2 * q, 3 * q), (3 * q, len(messages))]
    parts = [messages[a:b] for a, b in bounds]
    ids = [set(ordered_ids[a:b]) for a, b in bounds]

    with private_stack(tmp_path / "stack") as stack:
        settings, env = stack.env(
            tmp_path,
            models__bundle_dir=str(engine_bundle),
            **DELIVERY_OVERRIDES,
            features__timeout_ms=STORE_TIMEOUT_MS,
            redis__socket_timeout_ms=STORE_TIMEOUT_MS,
            redis__connect_timeout_ms=STORE_TIMEOUT_MS,
        )
        topics = settings.kafka.topics
        port = settings.worker.metrics_port
        await ensure_topics(settings.kafka)
        worker_log = tmp_path / "worker.log"

        async def decided(least: int) -> float:
            got = await wait_for_metric(port, "fraudstream_decisions_total", least, timeout=120)
            assert got >= least, f"{got:.0f} of {least} decided; {log_tail(worker_log)}"
            return got

        with running(["worker"], env, worker_log) as worker:
            worker.wait_for("Ready", timeout=120)
            await replay_produce(settings.kafka, topics.transactions, parts[0])
            before_stop = await decided(q // 4)  # mid-replay
            stack.pause("redis")
            out_at = time.monotonic()
            await replay_produce(settings.kafka, topics.transactions, parts[1])
            await decided(2 * q)  # all decided while Redis hangs
            hung_s = time.monotonic() - out_at
            await asyncio.to_thread(stack.kill, "redis", signal.SIGKILL)
            await replay_produce(settings.kafka, topics.transactions, parts[2])
            await decided(3 * q)  # ... and while it refuses connections
            await asyncio.to_thread(stack.restart)
            down_s = time.monotonic() - out_at
            await replay_produce(settings.kafka, topics.transactions, parts[3])
            await decided(len(messages))
            # The quarter decided while Redis hung, redelivered to a Redis that lost
            # everything: answered from the table (Kafka), not decided again.
            await replay_produce(settings.kafka, topics.transactions, parts[1])
            hits = await wait_for_metric(port, "fraudstream_dedupe_hits_total", len(parts[1]))
            got = await consume_until(
                stack.bootstrap,
                [topics.decisions],
                lambda got: len(got[topics.decisions]) >= len(messages) + len(parts[1]),
                timeout=120,
            )
            n_degraded = len({d["transaction_id"] for d in got[topics.decisions] if d["degraded"]})
            degraded_metric = await wait_for_metric(
                port, "fraudstream_degraded_decisions_total", n_degraded, timeout=10
            )
            errors = metric_samples(port, "fraudstream_feature_store_errors_total")
            timeout_defaults = scrape(port, "fraudstream_timeout_defaults_total")
            decided_total = scrape(port, "fraudstream_decisions_total")
            worker_rc = worker.stop()

    decisions: list[dict[str, Any]] = got[topics.decisions]
    by_id: dict[str, dict[str, Any]] = {}
    for d in decisions:
        assert by_id.setdefault(d["transaction_id"], d) == d, "two different decisions"
    degraded = [sum(by_id[tx]["degraded"] for tx in part if tx in by_id) for part in ids]
    report = (
        f"{len(valid_ids)} transactions in quarters of {q}; Redis out after "
        f"{before_stop:.0f} decisions, hung {hung_s:.1f} s, down {down_s:.1f} s in all; "
        f"degraded per quarter {degraded} (metric {degraded_metric:.0f}); "
        f"feature store errors {errors}; {len(decisions) - len(by_id)} duplicates on the "
        f"topic after a quarter was sent again ({hits:.0f} dedupe hits, "
        f"{decided_total:.0f} decided); "
        f"{time.monotonic() - began:.0f} s"
    )
    print(report)
    assert worker_rc == 0, f"{report}\n{log_tail(worker_log)}"

    # Nothing lost, nothing decided twice, nothing defaulted for want of Redis.
    assert set(by_id) == valid_ids, f"{len(valid_ids - set(by_id))} lost: {report}"
    assert not any(d["timeout_default"] for d in by_id.values()), report
    assert timeout_defaults == 0, report
    # The redelivered quarter: byte-identical copies (checked above), none decided again.
    assert decided_total == len(valid_ids) and hits == len(parts[1]), report
    assert len(decisions) == len(valid_ids) + len(parts[1]), report
    # While Redis was out: every decision degraded, made by the models all the same.
    full = {tuple(by_id[tx]["layers_run"]) for tx in ids[0] if not by_id[tx]["degraded"]}
    assert len(full) == 1, report
    assert degraded[1] == len(ids[1]) and degraded[2] == len(ids[2]), report
    assert all(tuple(by_id[tx]["layers_run"]) in full for tx in ids[1] | ids[2]), (
        "a layer was skipped"
    )
    # Before it went, and once it was back: features from the store, not degraded.
    assert len(ids[0]) - degraded[0] >= before_stop, report
    assert degraded[3] == 0, report
    assert degraded_metric == sum(degraded), report
    # The metrics saw both kinds of outage: a hang times out, a dead server refuses.
    assert errors.get('{error="FeatureStoreTimeout"}', 0) > 0, report
    assert errors.get('{error="FeatureStoreUnavailable"}', 0) > 0, report
