"""Allow/deny lists: the in-memory twin, Redis sets, and what rules see of them."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from models.rules import (
    InMemoryListStore,
    ListStoreUnavailable,
    RedisListStore,
    evaluate,
    parse_rules,
)
from models.rules.lists import list_key
from tests.models.factories_rules import RULE_FEATURES, make_tx, rule_batch, rule_toml


def test_list_keys_name_entity_and_kind() -> None:
    assert list_key("fs:list", "card_denylisted") == "fs:list:card:deny"
    assert list_key("fs:list", "terminal_allowlisted") == "fs:list:terminal:allow"
    with pytest.raises(ValueError, match="not a list"):
        list_key("fs:list", "amount")


def test_the_in_memory_store_answers_membership_per_value() -> None:
    store = InMemoryListStore({"device_denylisted": ["dev_1", "dev_2"]})
    store.remove("device_denylisted", ["dev_2"])
    store.add("ip_allowlisted", ["10.0.0.1"])
    found = store.contains(
        {"device_denylisted": ["dev_1", "dev_2", None], "ip_allowlisted": ["10.0.0.1", "x", None]}
    )
    assert found["device_denylisted"].tolist() == [True, False, False]
    assert found["ip_allowlisted"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="not a list"):
        store.add("card_blocked", ["x"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_redis_is_reported_as_lists_unavailable() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        port=_closed_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    store = RedisListStore(client)
    with pytest.raises(ListStoreUnavailable, match="allow/deny lists"):
        store.contains({"card_denylisted": ["card_a"]})
    # Nothing to look up: no round trip, no error.
    assert store.contains({"card_denylisted": [None]})["card_denylisted"].tolist() == [False]


class _CountingClient:
    """Wraps a redis client and counts pipeline round trips."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.client.pipeline(transaction=transaction)
        execute = pipe.execute

        def counted() -> Any:
            self.round_trips += 1
            return execute()

        pipe.execute = counted
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_redis_lists_are_read_in_one_round_trip_per_batch(
    redis_client: Callable[..., Any],
) -> None:
    counting = _CountingClient(redis_client())
    store = RedisListStore(counting, prefix="test:list")
    store.add("card_denylisted", ["card_b"])
    store.add("device_denylisted", ["dev_1"])
    store.add("card_allowlisted", ["card_c"])
    ruleset = parse_rules(
        rule_toml("card", "card_denylisted", "decline")
        + rule_toml("device", "device_denylisted", "decline")
        + rule_toml("vip", "card_allowlisted", "allow"),
        "rules.toml",
        RULE_FEATURES,
    )
    batch = rule_batch([make_tx(i, device_id=None if i == 3 else f"dev_{i % 2}") for i in range(4)])
    evaluation = evaluate(ruleset, batch, store)
    assert counting.round_trips == 1
    # cards a, b, c, d; devices dev_0, dev_1, dev_0, None
    assert evaluation.hits.tolist() == [
        [False, False, False],
        [True, True, False],
        [False, False, True],
        [False, False, False],
    ]
    store.remove("card_denylisted", ["card_b"])
    assert not np.any(evaluate(ruleset, batch, store).hits[:, 0])
