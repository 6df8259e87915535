"""What is particular to the in-memory twin (:class:`features.twin.InMemoryFeatureStore`):
the store interface, idempotent recording by transaction id, lateness accounting, exact
features for transactions late by up to the allowed lateness, label bookkeeping, and
memory that stops growing over a long run. Agreement with the offline builder on
general histories is in ``test_offline.py``."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import polars as pl

from features.definitions import (
    DAY_MS,
    DEFINITIONS_HASH,
    FEATURE_NAMES,
    FEATURES,
    HOUR_MS,
    LABEL_DELAY_MS,
    definitions_hash,
)
from features.sources import history_transactions, label_events, replay_order
from features.store import FeatureStore
from features.twin import InMemoryFeatureStore
from fraudstream.wire.schemas import LabelEvent, Transaction
from tests.features.factories import (
    T0,
    assert_same,
    history,
    label,
    labels,
    offline_matrix,
    tx,
)

MINUTE_MS = 60_000


def wire(*rows: dict[str, Any]) -> list[Transaction]:
    return history_transactions(history(rows))


def wire_label(row: dict[str, Any], label_time: int, fraud: bool) -> LabelEvent:
    return label_events(labels([label(row, label_time, fraud)]))[0]


def column(store: InMemoryFeatureStore, rows: list[Transaction], name: str) -> list[float]:
    return [float(v) for v in store.compute(rows).column(name)]


def test_is_a_feature_store_with_the_declared_names_and_hash() -> None:
    store = InMemoryFeatureStore()
    assert isinstance(store, FeatureStore)
    assert store.feature_names == FEATURE_NAMES
    assert store.definitions_hash == DEFINITIONS_HASH == definitions_hash(FEATURES)
    assert DEFINITIONS_HASH.startswith("sha256:")
    # the hash follows the meaning: one window one millisecond longer changes it
    card_7d = FEATURES[FEATURE_NAMES.index("card_nb_tx_7d")]
    assert card_7d.window_ms is not None
    i = FEATURES.index(card_7d)
    longer = dataclasses.replace(card_7d, window_ms=card_7d.window_ms + 1)
    assert definitions_hash((*FEATURES[:i], longer, *FEATURES[i + 1 :])) != DEFINITIONS_HASH
    assert definitions_hash(tuple(reversed(FEATURES))) != DEFINITIONS_HASH  # order counts
    empty = store.compute([])
    assert empty.names == FEATURE_NAMES
    assert empty.values.shape == (0, len(FEATURE_NAMES))
    assert store.state_size() == 0
    assert store.apply_labels([]) == 0


def test_compute_is_idempotent_per_transaction_id() -> None:
    store = InMemoryFeatureStore()
    a_row = tx("a", T0, device="d1", ip="10.0.0.1", mcc="5411", lat=1.0, lon=2.0)
    b_row = tx("b", T0 + MINUTE_MS, card="c1", device="d1", ip="10.0.0.1", mcc="5411")
    a, b = wire(a_row, b_row)
    first = store.compute([a]).values[0]
    size = store.state_size()
    again = store.compute([a, a]).values
    assert store.state_size() == size  # counted once, however often delivered
    for row in again:
        np.testing.assert_array_equal(row, first)

    # duplicates inside one batch, and the later transaction counts "a" once
    out = store.compute([b, a, b])
    np.testing.assert_array_equal(out.values[0], out.values[2])
    np.testing.assert_array_equal(out.values[1], first)
    assert out.column("card_nb_tx_1d").tolist() == [2.0, 1.0, 2.0]
    assert out.column("device_distinct_cards_1h").tolist() == [1.0, 1.0, 1.0]
    assert out.column("device_new_for_card").tolist() == [0.0, 1.0, 0.0]
    c = wire(tx("c", T0 + 2 * MINUTE_MS))[0]
    assert column(store, [c], "card_nb_tx_1d") == [3.0]
    assert store.too_late == 0

    # the whole replay with every message delivered twice is the replay once
    rows = [
        tx(f"r{i}", T0 + i * HOUR_MS, card=f"c{i % 2}", terminal=f"T{i % 3}") for i in range(40)
    ]
    once, twice = InMemoryFeatureStore(), InMemoryFeatureStore()
    msgs = wire(*rows)
    want = once.compute(msgs).values
    got = np.vstack([twice.compute([m, m]).values[1] for m in msgs])
    np.testing.assert_array_equal(got, want)
    assert once.state_size() == twice.state_size()


def test_too_late_counts_events_later_than_the_allowed_lateness_per_card() -> None:
    store = InMemoryFeatureStore(allowed_lateness_ms=MINUTE_MS)
    now = T0 + HOUR_MS
    store.compute(wire(tx("new", now)))
    store.compute(wire(tx("at-limit", now - MINUTE_MS)))  # exactly as late as allowed
    assert store.too_late == 0
    late = wire(tx("late", now - MINUTE_MS - 1))
    store.compute(late)
    assert store.too_late == 1
    store.compute(late)  # a redelivery is not a second late event
    assert store.too_late == 1
    store.compute(wire(tx("other-card", now - DAY_MS, card="c2")))  # c2 is not behind
    assert store.too_late == 1
    # Later than the card's retention: it still counts itself (this used to divide by
    # an empty window, the event having been trimmed as soon as it was recorded).
    very_late = tx("very-late", now - 40 * DAY_MS, device="d9", ip="10.9.9.9")
    out = store.compute(wire(very_late, tx("in-batch", now - 2 * HOUR_MS)))
    assert store.too_late == 3
    assert out.column("card_nb_tx_30d").tolist() == [1.0, 1.0]  # only events before count
    assert out.column("card_avg_amount_30d").tolist() == [10.0, 10.0]
    assert out.column("device_distinct_cards_1h")[0] == 1.0
    assert out.column("ip_distinct_cards_1h")[0] == 1.0


def test_redelivery_after_the_device_ip_and_terminal_went_idle() -> None:
    """The card keeps its events 30 days; a redelivered transaction must not need the
    device / ip / terminal state swept meanwhile (this used to raise KeyError)."""
    store = InMemoryFeatureStore()
    e = wire(tx("e", T0, terminal="T-old", device="d1", ip="10.0.0.1"))
    first = store.compute(e).values[0]
    for day in range(1, 40, 3):  # the card stays active; nothing else is used again
        store.compute(wire(tx(f"o{day}", T0 + day * DAY_MS - HOUR_MS, terminal="T-new")))
        if day < 30:
            again = store.compute(e).values[0]
            np.testing.assert_array_equal(again, first)
    assert store.too_late == 0


def test_events_late_within_the_lateness_get_exact_features() -> None:
    """Arrivals out of event order by up to the allowed lateness (two days here, so that
    it matters against the 30- and 37-day retention): every transaction whose
    predecessors in event order had all arrived gets exactly the offline features."""
    lateness = 2 * DAY_MS
    rng = np.random.default_rng(7)
    n = 400
    t = T0 + np.sort(rng.integers(0, 50 * DAY_MS, n))
    t[rng.integers(0, n, 40)] = T0 + rng.integers(0, 50, 40) * DAY_MS  # exact-day edges
    rows = [
        tx(
            f"t{i:04d}",
            int(t[i]),
            card=f"c{rng.integers(3)}",
            terminal=f"T{rng.integers(3)}",
            amount=float(rng.integers(0, 50_000)) / 100,
            device=[None, "d1", "d2"][rng.integers(3)],
            ip=[None, "10.0.0.1"][rng.integers(2)],
            mcc=[None, "5411", "5812"][rng.integers(3)],
        )
        for i in range(n)
    ]
    hist = history(rows)
    delay = np.where(rng.random(n) < 0.1, rng.integers(0, lateness + 1, n), 0)
    arrival = np.lexsort((np.arange(n), t + delay))
    order_key = {r["transaction_id"]: (r["event_time_ms"], r["transaction_id"]) for r in rows}

    store = InMemoryFeatureStore(allowed_lateness_ms=lateness)
    msgs = wire(*rows)
    got = np.full((n, len(FEATURE_NAMES)), np.nan)
    exact = np.zeros(n, dtype=bool)
    arrived: list[tuple[int, str]] = []
    for i in arrival:
        key = order_key[msgs[i].transaction_id]
        exact[i] = sum(k < key for k in arrived) == sum(
            order_key[r["transaction_id"]] < key for r in rows
        )
        arrived.append(key)
        got[i] = store.compute([msgs[i]]).values[0]
    assert store.too_late == 0
    assert exact.sum() > n // 2
    late_and_exact = exact & (delay > 0)
    assert late_and_exact.sum() > 10
    want = offline_matrix(hist)
    assert_same(
        got[exact], want[exact], ids=hist.filter(pl.Series(exact))["transaction_id"].to_list()
    )


def test_apply_labels_counts_changes_and_keeps_the_latest_verdict() -> None:
    store = InMemoryFeatureStore()
    x = tx("x", T0, terminal="T1")
    store.compute(wire(x))
    assert store.apply_labels([wire_label(x, T0 + DAY_MS, True)]) == 1
    assert store.apply_labels([wire_label(x, T0 + DAY_MS, True)]) == 0  # repeated
    assert store.apply_labels([wire_label(x, T0 + HOUR_MS, False)]) == 0  # older verdict
    probe = tx("p", T0 + LABEL_DELAY_MS, card="c2", terminal="T1")
    assert column(store, wire(probe), "terminal_risk_1d") == [1.0]
    assert store.apply_labels([wire_label(x, T0 + 2 * DAY_MS, False)]) == 1
    assert store.apply_labels([wire_label(x, T0 + 3 * DAY_MS, True)]) == 1
    assert store.apply_labels([wire_label(x, T0 + 3 * DAY_MS, False)]) == 1  # tie: later wins
    probe2 = tx("p2", T0 + LABEL_DELAY_MS + 1, card="c2", terminal="T1")
    assert column(store, wire(probe2), "terminal_risk_1d") == [0.0]
    # a label of a transaction older than every risk window changes nothing
    store.compute(wire(tx("late-news", T0 + 60 * DAY_MS, terminal="T1")))
    assert store.apply_labels([wire_label(x, T0 + 60 * DAY_MS, True)]) == 0


def _long_run(days: int, per_day: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cards, devices, ips and half the terminals churn (new ones every few days, old
    ones go idle); fixed merchant categories; a fraud label for every 20th transaction,
    known a few days after, some relabels, and chargebacks that come 60 days after,
    when their terminal may have been idle (and swept) for weeks."""
    rng = np.random.default_rng(11)
    rows, label_rows = [], []
    for day in range(days):
        for k in range(per_day):
            i = day * per_day + k
            generation = day // 5
            row = tx(
                f"x{i:07d}",
                T0 + day * DAY_MS + int(rng.integers(0, DAY_MS)),
                card=f"c{generation}_{rng.integers(8)}",
                terminal=f"T{rng.integers(10)}" if k % 2 else f"T{generation}_{rng.integers(3)}",
                amount=float(rng.integers(1, 20_000)) / 100,
                device=f"d{generation}_{rng.integers(6)}",
                ip=f"10.{generation % 250}.0.{rng.integers(4)}",
                mcc=["5411", "5812", "5999"][rng.integers(3)],
            )
            rows.append(row)
            if i % 20 == 0:
                known = row["event_time_ms"] + int(rng.integers(1, 9)) * DAY_MS
                label_rows.append(label(row, known, True))
                if i % 60 == 0:
                    label_rows.append(label(row, known + DAY_MS, False))
            if i % 5 == 1:
                label_rows.append(label(row, row["event_time_ms"] + 60 * DAY_MS, True))
    return history(rows), labels(label_rows)


def test_state_stops_growing_over_a_long_run_and_features_stay_exact() -> None:
    days, per_day = 150, 30
    hist, labs = _long_run(days, per_day)
    store = InMemoryFeatureStore()
    sizes = np.zeros(days, dtype=np.int64)
    got: dict[str, np.ndarray] = {}
    for kind, chunk in replay_order(hist, labs, batch_size=64):
        if kind == "labels":
            store.apply_labels(label_events(chunk))
        else:
            matrix = store.compute(history_transactions(chunk))
            got.update(zip(chunk["transaction_id"].to_list(), matrix.values, strict=True))
        day = (int(chunk[-1, "event_time_ms"]) - T0) // DAY_MS if kind == "tx" else None
        if day is not None and day < days:
            sizes[day] = max(sizes[day], store.state_size())
    assert store.too_late == 0
    # retention is 37 days (+ lateness, + a day before idle entities are swept): the
    # state levels off after that, far below the number of events seen
    middle, last = sizes[60:105].max(), sizes[105:].max()
    assert last <= 1.05 * middle, (middle, last)
    # each event sits in about five structures (card, terminal, device, ip, seen ids):
    # what is held is what the last ~40 days need, not the 150 days seen
    assert last < 5 * 40 * per_day, last
    assert sizes[20] < sizes[45]  # it did grow until the windows filled
    ids = hist["transaction_id"].to_list()
    assert_same(np.vstack([got[i] for i in ids]), offline_matrix(hist, labs), ids=ids)
