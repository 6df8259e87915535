"""A real worker following a real MLflow registry (sqlite in tmp_path): the challenger's
decisions on the shadow topic, the canary decided by the challenger (its model version on
the decision), then a promotion followed without restart."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from features.definitions import DEFINITIONS_HASH
from streams.rollout import in_canary
from streams.topics import ensure_topics
from tests.streams.harness import (
    DELIVERY_OVERRIDES,
    FraudstreamProcess,
    consume_until,
    produce,
    transaction,
)
from training.registry import CHALLENGER, CHAMPION, RegistryConfig
from training.registry_mlflow import MlflowRegistry

pytestmark = pytest.mark.integration

METRICS = {"average_precision": 0.5, "card_precision_at_100": 0.2, "auc_roc": 0.8}
SHARE = 0.3


def messages(numbers: range) -> list[tuple[bytes | None, bytes]]:
    txs = [transaction(i) for i in numbers]
    return [(t["card_id"].encode(), json.dumps(t).encode()) for t in txs]


# The registry watcher and the hot swap in the worker's process, and in the decider's
# child process (worker.decider_process).
@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "child-process"])
async def test_shadow_canary_and_promotion_on_a_running_worker(
    stack: Any, make_settings: Any, engine_bundle: Path, tmp_path: Path, in_child: bool
) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowRegistry(RegistryConfig(tracking_uri=tracking))
    # The same trained engine twice: the registry version tells them apart.
    champion = registry.register(engine_bundle, METRICS, {}, DEFINITIONS_HASH)
    challenger = registry.register(engine_bundle, METRICS, {}, DEFINITIONS_HASH)
    registry.promote(champion, CHAMPION, actor="test", reason="first")
    registry.promote(challenger, CHALLENGER, actor="test", reason="shadow and canary")
    rollout = tmp_path / "rollout.toml"
    rollout.write_text(f"canary_share = {SHARE}\nshadow = true\n", encoding="utf-8")
    settings, env = make_settings(
        with_env=True,
        models__source="registry",
        models__poll_interval_s="0.5",
        models__download_dir=str(tmp_path / "downloads"),
        models__rollout_file=str(rollout),
        mlflow__tracking_uri=tracking,
        worker__decider_process=str(in_child).lower(),
        **DELIVERY_OVERRIDES,
    )
    topics = settings.kafka.topics
    await ensure_topics(settings.kafka)
    log = tmp_path / "worker.log"
    worker = FraudstreamProcess(["worker"], env, log).start()
    try:
        worker.wait_for("Ready", timeout=90)
        await produce(stack.kafka_bootstrap, topics.transactions, messages(range(200)))
        first = await consume_until(
            stack.kafka_bootstrap,
            [topics.decisions, topics.decisions_shadow],
            lambda got: (
                len(got[topics.decisions]) >= 200 and len(got[topics.decisions_shadow]) >= 200
            ),
            timeout=90,
        )
        # Promote the challenger: the worker follows without a restart.
        registry.promote(challenger, CHAMPION, actor="test", reason="won the canary")
        worker.wait_for(f"champion version {challenger} loaded", timeout=60)
        await produce(stack.kafka_bootstrap, topics.transactions, messages(range(200, 260)))
        after = await consume_until(
            stack.kafka_bootstrap,
            [topics.decisions, topics.decisions_shadow],
            lambda got: len(got[topics.decisions]) >= 260,
            timeout=60,
        )
    finally:
        assert worker.stop() == 0, log.read_text()[-3000:]

    live = {d["transaction_id"]: d["model_version"] for d in first[topics.decisions]}
    shadow = {d["transaction_id"]: d["model_version"] for d in first[topics.decisions_shadow]}
    ids = {transaction(i)["transaction_id"] for i in range(200)}
    assert set(live) == set(shadow) == ids
    assert max(Counter(d["transaction_id"] for d in first[topics.decisions]).values()) == 1
    canary = {i for i in ids if in_canary(i, SHARE)}
    assert 0 < len(canary) < len(ids)
    assert {i for i, v in live.items() if v.startswith(f"v{challenger}:")} == canary
    assert {i for i, v in live.items() if v.startswith(f"v{champion}:")} == ids - canary
    # Each transaction was decided by both: the one that did not act is in shadow.
    assert all(live[i].split(":")[0] != shadow[i].split(":")[0] for i in ids)
    assert all(d["decision"] in {"approve", "review", "decline"} for d in first[topics.decisions])

    later = [t["transaction_id"] for t in (transaction(i) for i in range(200, 260))]
    decided = {d["transaction_id"]: d["model_version"] for d in after[topics.decisions]}
    assert all(decided[i].startswith(f"v{challenger}:") for i in later)
    # Promoted, the challenger alias is gone: nothing more in shadow.
    assert not {d["transaction_id"] for d in after[topics.decisions_shadow]} & set(later)
