"""The Redis online store on a real Redis: batch semantics, idempotency, lateness,
labels, and failure behaviour (typed errors, within the timeout, nothing half-written).
Parity with the offline builder over long histories is in ``test_parity.py``."""

from __future__ import annotations

import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.definitions import DAY_MS, FEATURE_NAMES
from features.online import RedisFeatureStore, redis_client_for
from features.sources import history_transactions, label_events
from features.store import FeatureStore
from features.twin import InMemoryFeatureStore
from fraudstream.errors import FeatureStoreTimeout, FeatureStoreUnavailable
from fraudstream.wire.schemas import LabelEvent, Transaction
from tests.features import factories
from tests.features.test_offline import scenarios

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday


def make_tx(
    i: int,
    *,
    at: timedelta,
    card: str = "card1",
    terminal: str = "T1",
    amount: float = 10.0,
    **fields: Any,
) -> Transaction:
    return Transaction(
        schema_version=1,
        transaction_id=f"tx{i:06d}",
        event_time=T0 + at,
        card_id=card,
        terminal_id=terminal,
        amount=amount,
        currency="EUR",
        **fields,
    )


def make_label(tx: Transaction, *, fraud: bool, after: timedelta = timedelta(days=1)) -> LabelEvent:
    return LabelEvent(
        schema_version=1,
        transaction_id=tx.transaction_id,
        card_id=tx.card_id,
        terminal_id=tx.terminal_id,
        event_time=tx.event_time,
        label_time=tx.event_time + after,
        is_fraud=fraud,
        source="chargeback",
        mcc=tx.mcc,
    )


@pytest.fixture
def make_store(redis_client: Callable[..., Any]) -> Callable[..., RedisFeatureStore]:
    def build(**kwargs: Any) -> RedisFeatureStore:
        kwargs.setdefault("timeout_ms", 2_000.0)
        return RedisFeatureStore(redis_client(), **kwargs)

    return build


def col(matrix: Any, name: str) -> list[float]:
    return [float(v) for v in matrix.column(name)]


def test_is_a_feature_store(make_store: Callable[..., RedisFeatureStore]) -> None:
    store = make_store()
    assert isinstance(store, FeatureStore)
    assert store.feature_names == FEATURE_NAMES
    assert store.compute([]).values.shape == (0, len(FEATURE_NAMES))


def test_rows_see_earlier_rows_of_the_same_batch_and_windows_expire(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    store = make_store()
    batch = [
        make_tx(1, at=timedelta(0), amount=10.0),
        make_tx(2, at=timedelta(hours=1), amount=20.0, terminal="T2"),
        make_tx(3, at=timedelta(hours=2), amount=30.0),
    ]
    m = store.compute(batch)
    assert col(m, "card_nb_tx_1d") == [1, 2, 3]
    assert col(m, "card_avg_amount_1d") == [10.0, 15.0, 20.0]
    assert col(m, "card_distinct_terminals_1d") == [1, 2, 2]
    assert math.isnan(col(m, "secs_since_prev_card_tx")[0])
    assert col(m, "secs_since_prev_card_tx")[1:] == [3600.0, 3600.0]
    assert col(m, "amount_to_card_mean_30d")[2] == pytest.approx(30.0 / 20.0, rel=1e-12)
    # Two days later the 1-day window is empty but for the transaction itself.
    later = store.compute([make_tx(4, at=timedelta(days=2, hours=3), amount=40.0)])
    assert col(later, "card_nb_tx_1d") == [1]
    assert col(later, "card_nb_tx_7d") == [4]
    assert col(later, "card_avg_amount_7d") == [25.0]


def test_same_millisecond_is_ordered_by_transaction_id_whatever_the_arrival(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    store = make_store()
    second, first = make_tx(2, at=timedelta(0), amount=5.0), make_tx(1, at=timedelta(0))
    m = store.compute([second, first])  # tx000002 arrives first but is ordered second
    assert col(m, "card_nb_tx_1d") == [1, 1]
    again = store.compute([second, first])
    assert col(again, "card_nb_tx_1d") == [2, 1]


def test_redelivery_is_not_counted_twice(make_store: Callable[..., RedisFeatureStore]) -> None:
    store = make_store()
    batch = [make_tx(i, at=timedelta(minutes=i), amount=float(i)) for i in range(1, 6)]
    first = store.compute(batch)
    again = store.compute(batch)
    np.testing.assert_array_equal(first.values, again.values)
    nxt = store.compute([make_tx(9, at=timedelta(minutes=9))])
    assert col(nxt, "card_nb_tx_1d") == [6]


def test_late_transaction_gets_in_order_features_and_corrects_later_ones(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    in_order = make_store(key_prefix="ordered")
    late = make_store(key_prefix="late", allowed_lateness_ms=3_600_000)
    txs = [make_tx(i, at=timedelta(minutes=10 * i), amount=float(i)) for i in range(1, 6)]
    expected = in_order.compute(txs).values
    shuffled = [txs[0], txs[2], txs[1], txs[3], txs[4]]  # tx 2 is 10 minutes late
    got = late.compute(shuffled).values
    # tx 2 (late) gets what it would have had in order; txs after it count it.
    np.testing.assert_array_equal(got[[0, 2, 3, 4]], expected[[0, 1, 3, 4]])
    assert late.too_late == 0
    # tx 3 was scored before tx 2 arrived, so it saw one event fewer; that is the
    # one difference, and a redelivery of tx 3 now sees it.
    assert col(late.compute([txs[2]]), "card_nb_tx_1d") == [3]


def test_later_than_allowed_lateness_is_counted(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    store = make_store(allowed_lateness_ms=60_000)
    store.compute([make_tx(1, at=timedelta(hours=1))])
    store.compute([make_tx(2, at=timedelta(0))])
    assert store.too_late == 1


def test_labels_reach_terminal_risk_only_after_the_delay(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    store = make_store()
    frauds = [make_tx(i, at=timedelta(hours=i), card=f"c{i}", mcc="5411") for i in range(4)]
    store.compute(frauds)
    assert store.apply_labels([make_label(frauds[0], fraud=True)]) == 1
    assert store.apply_labels([make_label(frauds[0], fraud=True)]) == 0  # repeated
    assert store.apply_labels([make_label(frauds[1], fraud=False)]) == 0  # no change
    probe_early = make_tx(10, at=timedelta(days=6), card="x", mcc="5411")
    probe = make_tx(11, at=timedelta(days=7, hours=2, minutes=30), card="y", mcc="5411")
    m = store.compute([probe_early, probe])
    assert col(m, "terminal_nb_tx_1d") == [0, 3]  # txs at 0h,1h,2h are >= 7 days old
    assert col(m, "terminal_risk_1d") == [0.0, pytest.approx(1 / 3)]
    # Merchant category risk uses whole UTC days [today-36, today-7].
    far = make_tx(12, at=timedelta(days=8), card="z", mcc="5411")
    assert col(store.compute([far]), "mcc_risk_30d") == [pytest.approx(1 / 4)]
    # A verdict reversing the chargeback takes the fraud back out.
    assert store.apply_labels([make_label(frauds[0], fraud=False, after=timedelta(days=2))]) == 1
    probe2 = make_tx(13, at=timedelta(days=7, hours=2, minutes=40), card="w", mcc="5411")
    assert col(store.compute([probe2]), "terminal_risk_1d") == [0.0]


def test_rich_fields_missing_give_nan_and_present_give_values(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    store = make_store()
    bare = make_tx(1, at=timedelta(0))
    paris = make_tx(
        2, at=timedelta(hours=1), device_id="d1", ip="1.2.3.4", latitude=48.8566, longitude=2.3522
    )
    london = make_tx(
        3, at=timedelta(hours=2), device_id="d1", ip="1.2.3.4", latitude=51.5074, longitude=-0.1278
    )
    other_card = make_tx(
        4, at=timedelta(hours=2, minutes=30), card="card2", device_id="d1", ip="1.2.3.4"
    )
    m = store.compute([bare, paris, london, other_card])
    for name in (
        "device_new_for_card",
        "device_distinct_cards_1h",
        "ip_distinct_cards_1h",
        "geo_distance_km",
        "geo_speed_kmh",
        "mcc_risk_30d",
    ):
        assert math.isnan(col(m, name)[0]), name
    assert col(m, "device_new_for_card")[1:] == [1.0, 0.0, 1.0]
    assert math.isnan(col(m, "geo_distance_km")[1])  # previous had no location
    assert col(m, "geo_distance_km")[2] == pytest.approx(343.5, abs=1.0)
    assert col(m, "geo_speed_kmh")[2] == pytest.approx(343.5, abs=1.0)  # one hour apart
    assert col(m, "device_distinct_cards_1h")[1:] == [1.0, 1.0, 2.0]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_down_raises_unavailable_within_the_timeout() -> None:
    client = redis_client_for(
        f"redis://127.0.0.1:{_dead_port()}/0", timeout_ms=50, connect_timeout_ms=50
    )
    started = time.monotonic()
    with pytest.raises(FeatureStoreUnavailable):
        RedisFeatureStore(client, timeout_ms=50).compute([make_tx(1, at=timedelta(0))])
    assert time.monotonic() - started < 1.0


def test_slow_redis_raises_timeout_and_leaves_nothing_behind(
    redis_client: Callable[..., Any],
) -> None:
    blocker, probe = redis_client(), redis_client()
    store = RedisFeatureStore(redis_client(socket_timeout=0.05), timeout_ms=50)
    store.compute([make_tx(1, at=timedelta(0))])  # loads the scripts
    keys_before = sorted(probe.keys("*"))
    # A busy script stalls the server for 400 ms, as an overloaded Redis would.
    busy = (
        "local s = redis.call('TIME'); local t0 = s[1] * 1e6 + s[2]; "
        "repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] - t0 > 400000"
    )
    stall = threading.Thread(target=blocker.eval, args=(busy, 0))
    stall.start()
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(FeatureStoreTimeout):
        store.compute([make_tx(2, at=timedelta(minutes=1), card="card9")])
    elapsed = time.monotonic() - started
    stall.join()
    assert elapsed < 0.3
    time.sleep(0.2)  # the server has now run (and refused) the expired batch
    assert sorted(probe.keys("*")) == keys_before
    ok = RedisFeatureStore(redis_client(), timeout_ms=2_000)
    assert col(
        ok.compute([make_tx(2, at=timedelta(minutes=1), card="card9")]), "card_nb_tx_1d"
    ) == [1]


def test_state_is_trimmed_as_the_card_history_advances(
    make_store: Callable[..., RedisFeatureStore],
    redis_client: Callable[..., Any],
) -> None:
    store = make_store(key_prefix="trim", allowed_lateness_ms=0)
    txs = [make_tx(i, at=timedelta(days=i)) for i in range(70)]
    m = store.compute(txs)
    assert col(m, "card_nb_tx_30d")[-1] == 30
    client = redis_client()
    retained = client.zcard("trim:c:card1:z")
    assert retained <= 32  # 30 days plus the trimming hysteresis
    assert client.pttl("trim:c:card1:z") > 30 * DAY_MS


def replay_online_in_arrival_order(
    store: RedisFeatureStore,
    rows: list[dict[str, Any]],
    label_rows: list[dict[str, Any]],
    batch: int,
    order: list[int],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Online and twin features of ``rows`` fed in ``order`` (labels first, all known
    before any transaction), micro-batch by micro-batch; rows back in history order."""
    twin = InMemoryFeatureStore(allowed_lateness_ms=store.allowed_lateness_ms)
    hist, labs = factories.history(rows), factories.labels(label_rows)
    if label_rows:
        events = label_events(labs)
        store.apply_labels(events)
        twin.apply_labels(events)
    txs = history_transactions(hist)
    online: dict[str, npt.NDArray[np.float64]] = {}
    mirror: dict[str, npt.NDArray[np.float64]] = {}
    arrivals = [txs[i] for i in order]
    for start in range(0, len(arrivals), batch):
        chunk = arrivals[start : start + batch]
        for got, out in ((store.compute(chunk), online), (twin.compute(chunk), mirror)):
            for tx, row in zip(chunk, got.values, strict=True):
                out[tx.transaction_id] = row
    ids = hist["transaction_id"].to_list()
    return np.vstack([online[i] for i in ids]), np.vstack([mirror[i] for i in ids])


@settings(
    max_examples=40,
    deadline=None,
    # each example writes under a prefix of its own, so sharing the client is safe
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios(), data=st.data())
def test_online_equals_twin_in_any_arrival_order(
    scenario: tuple[list[dict[str, Any]], list[dict[str, Any]], int],
    data: st.DataObject,
    redis_client: Callable[..., Any],
) -> None:
    """Late arrivals (within the allowed lateness), ties, labels, whole-week batches: the
    Redis store and the twin agree on every feature of every row."""
    rows, label_rows, batch = scenario
    # Arrival order: by event time plus a delay under the allowed lateness, so every
    # transaction is late by less than it (and many arrive after later ones).
    lateness = 7 * DAY_MS
    delays = data.draw(
        st.lists(
            st.one_of(st.just(0), st.integers(0, lateness - 1)),
            min_size=len(rows),
            max_size=len(rows),
        )
    )
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["event_time_ms"] + delays[i], i))
    store = RedisFeatureStore(
        redis_client(),
        key_prefix=f"any-{uuid.uuid4().hex[:8]}",
        allowed_lateness_ms=lateness,
        timeout_ms=30_000,
    )
    online, twin = replay_online_in_arrival_order(store, rows, label_rows, batch, list(order))
    factories.assert_same(online, twin)
    assert store.too_late == 0  # nothing here is later than the allowed lateness


def test_cached_merchant_category_sums_follow_labels_and_week_late_payments(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    """A category's 30-day sums are kept across batches; a label, or a payment late
    enough to fall inside those 30 days, must reach the next transaction's risk."""
    lateness = 10 * DAY_MS
    store = make_store(allowed_lateness_ms=lateness)
    twin = InMemoryFeatureStore(allowed_lateness_ms=lateness)

    def risk(tx: Transaction) -> float:
        online, mirror = (
            col(store.compute([tx]), "mcc_risk_30d"),
            col(twin.compute([tx]), "mcc_risk_30d"),
        )
        assert online == mirror
        return online[0]

    old = [make_tx(i, at=timedelta(days=i), card=f"c{i}", mcc="5411") for i in range(2)]
    for tx in old:
        risk(tx)
    day10 = timedelta(days=10)
    assert risk(make_tx(10, at=day10, card="p", mcc="5411")) == 0.0  # days 0-1: 2, no fraud
    fraud = make_label(old[0], fraud=True, after=day10 + timedelta(minutes=30))
    assert store.apply_labels([fraud]) == twin.apply_labels([fraud]) == 1
    assert risk(make_tx(11, at=day10 + timedelta(hours=1), card="p", mcc="5411")) == 0.5
    # eight days late, within the allowed lateness: day 2 is inside day 10's window
    late = make_tx(2, at=timedelta(days=2), card="c2", mcc="5411")
    risk(late)
    assert risk(make_tx(12, at=day10 + timedelta(hours=2), card="p", mcc="5411")) == 1 / 3


def test_a_late_transaction_still_sees_merchant_category_days_a_newer_one_moved_past(
    redis_client: Callable[..., Any],
) -> None:
    """Found by the property above: recording a day-38 transaction dropped the category's
    day-0 bucket, which a day-36 transaction arriving after it (2 days late, within the
    allowed lateness) still reads. The buckets kept now cover the lateness too."""
    day0 = 1_772_409_600_000

    def tx(tx_id: str, day: int) -> dict[str, Any]:
        return {
            "transaction_id": tx_id, "event_time_ms": day0 + day * DAY_MS, "card_id": "c1",
            "terminal_id": "T1", "amount": 1.0, "device_id": None, "ip": None,
            "mcc": "5411", "latitude": None, "longitude": None,
        }  # fmt: skip

    fraud = {
        "transaction_id": "on-day-0", "card_id": "c1", "terminal_id": "T1", "mcc": "5411",
        "event_time_ms": day0, "label_time_ms": day0 + DAY_MS, "is_fraud": 1,
    }  # fmt: skip
    store = RedisFeatureStore(
        redis_client(), key_prefix=f"late-{uuid.uuid4().hex[:8]}", allowed_lateness_ms=7 * DAY_MS
    )
    rows = [tx("on-day-0", 0), tx("on-day-36", 36), tx("on-day-38", 38)]
    online, twin = replay_online_in_arrival_order(store, rows, [fraud], 1, [0, 2, 1])
    risk = FEATURE_NAMES.index("mcc_risk_30d")
    # Day 0 (one transaction, a fraud) is inside day 36's window [day 0, day 29].
    assert online[1, risk] == twin[1, risk] == 1.0
    factories.assert_same(online, twin)


def test_redelivered_late_transaction_is_counted_late_once(
    make_store: Callable[..., RedisFeatureStore],
) -> None:
    store = make_store(allowed_lateness_ms=0)
    old = make_tx(1, at=timedelta(0))
    store.compute([make_tx(2, at=timedelta(hours=1))])
    store.compute([old])
    store.compute([old])
    assert store.too_late == 1
