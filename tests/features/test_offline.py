"""The offline builder agrees with the in-memory twin, and both with hand-worked answers.

Each hand-written case below is a small history whose every relevant feature value was
worked out from :mod:`features.definitions` by hand: ties in the same millisecond
(ordered by transaction id, byte-wise), windows edges exactly at ``t - n``, delayed
terminal windows ``(t - 7d - n, t - 7d]``, a late label, a transaction relabelled
fraud -> genuine -> fraud, labels tied at one label time, merchant-category UTC day
buckets, and missing fields giving NaN. Every case is also replayed through the twin
(:func:`features.sources.replay_order`, several batch sizes) and must match offline on
every feature.

The Hypothesis test then generates small histories (few cards, terminals, devices,
times clustered on day / hour / millisecond offsets so that ties and window edges
happen often, random labels and relabels) and holds offline == twin on every row and
feature: counts exactly, reals within 1e-9, NaN in the same places.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.definitions import (
    DAY_MS,
    EARTH_RADIUS_KM,
    FEATURE_NAMES,
    HOUR_MS,
    INTEGER_FEATURES,
)
from features.offline import build_features
from tests.features.factories import (
    NAN,
    T0,
    assert_same,
    history,
    label,
    labels,
    offline_matrix,
    replay_twin,
    tx,
)

MINUTE_MS = 60_000
DEG_KM = EARTH_RADIUS_KM * math.pi / 180  # one degree of a great circle


def features(
    rows: Sequence[Mapping[str, Any]], label_rows: Sequence[Mapping[str, Any]] = ()
) -> dict[str, list[float]]:
    """Offline features by name (history row order), after checking the twin replay,
    at several batch sizes, gives the same numbers."""
    hist, labs = history(rows), labels(label_rows)
    off = offline_matrix(hist, labs)
    ids = hist["transaction_id"].to_list()
    for batch in (1, 2, 256):
        assert_same(replay_twin(hist, labs, batch), off, ids=ids)
    return {name: off[:, j].tolist() for j, name in enumerate(FEATURE_NAMES)}


def check(got: dict[str, list[float]], want: Mapping[str, Sequence[float]]) -> None:
    for name, values in want.items():
        if name in INTEGER_FEATURES:
            np.testing.assert_array_equal(got[name], values, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], values, rtol=1e-12, atol=0, err_msg=name)


# ------------------------------------------------------------------ hand-worked cases


def test_ties_in_one_millisecond_are_ordered_by_id_bytewise() -> None:
    t = T0 + 12 * HOUR_MS
    rows = [
        tx("b", t, amount=20.0, terminal="T2", device="d1"),
        tx("a", t, amount=10.0, terminal="T1", device="d1"),
        tx("9", t, card="c2", device="d1"),
        tx("B", t, amount=40.0, terminal="T1", device="d1"),
        tx("a0", t, amount=30.0, terminal="T3", device="d1"),
        tx("10", t, card="c2", device="d1"),
    ]
    # byte order: "10" < "9" < "B" < "a" < "a0" < "b"
    got = features(rows)
    check(
        got,
        {
            #                     b     a    9    B    a0   10
            "card_nb_tx_1d": [4, 2, 2, 1, 3, 1],
            "card_nb_tx_30d": [4, 2, 2, 1, 3, 1],
            "card_avg_amount_1d": [25.0, 25.0, 10.0, 40.0, 80 / 3, 10.0],
            "secs_since_prev_card_tx": [0.0, 0.0, 0.0, NAN, 0.0, NAN],
            "card_distinct_terminals_1d": [3, 1, 1, 1, 2, 1],
            "device_new_for_card": [0, 0, 0, 1, 0, 1],
            "device_distinct_cards_1h": [2, 2, 1, 2, 2, 1],
            "geo_distance_km": [NAN] * 6,
        },
    )


def test_card_windows_exclude_an_event_exactly_n_days_before() -> None:
    x = T0 + HOUR_MS
    times = [x, x + DAY_MS - 1, x + DAY_MS, x + 7 * DAY_MS, x + 30 * DAY_MS]
    times += [x + 31 * DAY_MS - 1, x + 61 * DAY_MS - 1]
    amounts = [100.0, 50.0, 30.0, 20.0, 10.0, 40.0, 7.0]
    rows = [tx(f"p{i}", t, amount=a) for i, (t, a) in enumerate(zip(times, amounts, strict=True))]
    got = features(rows)
    check(
        got,
        {
            "card_nb_tx_1d": [1, 2, 2, 1, 1, 2, 1],
            "card_nb_tx_7d": [1, 2, 3, 3, 1, 2, 1],
            "card_nb_tx_30d": [1, 2, 3, 4, 4, 4, 1],
            "card_avg_amount_1d": [100, 75, 40, 20, 10, 25, 7],
            "card_avg_amount_7d": [100, 75, 60, 100 / 3, 10, 25, 7],
            "card_avg_amount_30d": [100, 75, 60, 50, 27.5, 25, 7],
            "amount_to_card_mean_30d": [1, 50 / 75, 0.5, 0.4, 10 / 27.5, 1.6, 1],
            "card_mean_1d_to_30d": [1, 1, 40 / 60, 0.4, 10 / 27.5, 1, 1],
            "card_mean_7d_to_30d": [1, 1, 1, (100 / 3) / 50, 10 / 27.5, 1, 1],
            # previous exactly 30 days before is outside the card history: NaN
            "secs_since_prev_card_tx": [
                NAN,
                86_399.999,
                0.001,
                518_400,
                1_987_200,
                86_399.999,
                NAN,
            ],
            "card_distinct_terminals_1d": [1] * 7,
        },
    )


def test_terminal_delayed_windows_edges() -> None:
    x = T0 + 2 * HOUR_MS
    fraud = tx("x", x, terminal="T9", card="cx")
    rows = [fraud]
    offsets = [7 * DAY_MS - 1, 7 * DAY_MS, 8 * DAY_MS - 1, 8 * DAY_MS, 14 * DAY_MS]
    offsets += [37 * DAY_MS, 37 * DAY_MS - 1]
    rows += [tx(f"e{i + 1}", x + o, terminal="T9", card=f"c{i}") for i, o in enumerate(offsets)]
    got = features(rows, [label(fraud, x + DAY_MS, True)])
    check(
        got,
        {
            #                  x  e1 e2 e3 e4 e5 e6 e7
            "terminal_nb_tx_1d": [0, 0, 1, 1, 0, 2, 0, 0],
            "terminal_risk_1d": [0, 0, 1, 1, 0, 0, 0, 0],
            "terminal_nb_tx_7d": [0, 0, 1, 1, 1, 2, 0, 0],
            "terminal_risk_7d": [0, 0, 1, 1, 1, 0, 0, 0],
            "terminal_nb_tx_30d": [0, 0, 1, 1, 1, 3, 5, 6],
            "terminal_risk_30d": [0, 0, 1, 1, 1, 1 / 3, 0, 1 / 6],
        },
    )


def test_late_label_relabels_and_ties_at_one_label_time() -> None:
    x0 = T0 + 3 * HOUR_MS
    x = tx("x", x0, terminal="T5", card="cx")
    y = tx("y", x0, terminal="T5", card="cy")
    q = [7 * DAY_MS, 9 * DAY_MS, 10 * DAY_MS - 1, 10 * DAY_MS, 11 * DAY_MS, 20 * DAY_MS]
    rows = [x, y] + [tx(f"q{i + 1}", x0 + o, terminal="T5", card="cq") for i, o in enumerate(q)]
    label_rows = [
        label(x, x0 + DAY_MS, True),
        label(x, x0 + 9 * DAY_MS, False),  # fraud -> genuine
        label(x, x0 + 11 * DAY_MS, True),  # -> fraud again
        label(y, x0 + 10 * DAY_MS, True),  # known only 10 days after
        label(x, x0 + 20 * DAY_MS, False),  # two labels at one time: the later row wins
        label(x, x0 + 20 * DAY_MS, True),
        label(y, x0 + 20 * DAY_MS, True),
        label(y, x0 + 20 * DAY_MS, False),
    ]
    got = features(rows, label_rows)
    check(
        got,
        {
            #                   x  y  q1   q2 q3 q4   q5 q6
            "terminal_nb_tx_1d": [0, 0, 2, 0, 0, 0, 0, 0],
            "terminal_risk_1d": [0, 0, 0.5, 0, 0, 0, 0, 0],
            "terminal_nb_tx_7d": [0, 0, 2, 2, 2, 2, 2, 5],
            "terminal_risk_7d": [0, 0, 0.5, 0, 0, 0.5, 1, 0],
            "terminal_nb_tx_30d": [0, 0, 2, 2, 2, 2, 2, 7],
            "terminal_risk_30d": [0, 0, 0.5, 0, 0, 0.5, 1, 1 / 7],
        },
    )
    # Labels known at the very time of a transaction count for it; so does a label
    # known at the instant its own transaction happened.
    z = tx("z", x0, terminal="T6")
    got = features([z, tx("r", x0 + 7 * DAY_MS, terminal="T6")], [label(z, x0, True)])
    check(got, {"terminal_risk_1d": [0, 1], "terminal_nb_tx_1d": [0, 1]})


def test_terminal_fraud_streak_counts_the_latest_known_frauds_in_a_row() -> None:
    x = T0 + HOUR_MS
    a, b, c, d = (tx(n, x + i * HOUR_MS, terminal="T7", card=f"c{n}") for i, n in enumerate("abcd"))
    q = [7 * DAY_MS + HOUR_MS, 7 * DAY_MS + 150 * MINUTE_MS, 7 * DAY_MS + 3 * HOUR_MS]
    q += [8 * DAY_MS + 3 * HOUR_MS]
    rows = [a, b, c, d]
    rows += [tx(f"q{i + 1}", x + o, terminal="T7", card="cq") for i, o in enumerate(q)]
    label_rows = [
        label(a, x + 7 * DAY_MS, True),
        label(c, x + 2 * HOUR_MS + 7 * DAY_MS, True),
        label(d, x + 3 * HOUR_MS + 8 * DAY_MS, True),  # known a day later than the others
        label(c, x + 8 * DAY_MS + HOUR_MS, False),  # c turns out genuine
    ]
    got = features(rows, label_rows)
    # q1: b (no label) is the latest;  q2: c, then b;  q3: d not known yet;
    # q4: d, then c is genuine by now
    check(got, {"terminal_fraud_streak": [0, 0, 0, 0, 0, 1, 0, 1]})

    # The run stays inside the 30 days ending 7 days ago.
    y = T0 + 2 * HOUR_MS
    f1, f2 = tx("f1", y, terminal="T8"), tx("f2", y + DAY_MS, terminal="T8")
    r1 = tx("r1", y + 30 * DAY_MS + 13 * HOUR_MS, terminal="T8")
    r2 = tx("r2", y + 37 * DAY_MS + 12 * HOUR_MS, terminal="T8")
    frauds = [label(f, f["event_time_ms"] + 7 * DAY_MS, True) for f in (f1, f2)]
    got = features([f1, f2, r1, r2], frauds)
    check(got, {"terminal_fraud_streak": [0, 0, 2, 1]})


def test_missing_fields_give_nan_and_geo_needs_both_ends_located() -> None:
    x = T0 + HOUR_MS
    rows = [
        tx("m0", x),
        tx("m1", x + 30_000, device="d1", ip="10.0.0.1", mcc="5411", lat=0.0, lon=0.0),
        tx("m2", x + 60_000, ip="10.0.0.1", lat=0.0, lon=1.0),
        tx("m3", x + 2 * HOUR_MS, lat=0.0),  # half a location is no location
        tx("m4", x + 4 * HOUR_MS, lat=0.0, lon=1.0),
        tx("m5", x + 6 * HOUR_MS, device="d1", lat=1.0, lon=1.0),
    ]
    got = features(rows)
    check(
        got,
        {
            "secs_since_prev_card_tx": [NAN, 30, 30, 7140, 7200, 7200],
            "geo_distance_km": [NAN, NAN, DEG_KM, NAN, NAN, DEG_KM],
            # at least one minute between the two: 30 s counts as 60 s
            "geo_speed_kmh": [NAN, NAN, DEG_KM * 60, NAN, NAN, DEG_KM / 2],
            "device_new_for_card": [NAN, 1, NAN, NAN, NAN, 0],
            "device_distinct_cards_1h": [NAN, 1, NAN, NAN, NAN, 1],
            "ip_distinct_cards_1h": [NAN, 1, 1, NAN, NAN, NAN],
            "mcc_risk_30d": [NAN, 0, NAN, NAN, NAN, NAN],
            "amount": [10.0] * 6,
        },
    )


def test_distinct_cards_per_device_and_ip_and_device_novelty() -> None:
    x = T0 + 5 * HOUR_MS
    pattern = [("c1", 0), ("c2", 30), ("c1", 59), ("c3", 60), ("c1", 90)]
    rows = [
        tx(f"k{i}", x + m * MINUTE_MS, card=c, device="d1", ip="1.2.3.4")
        for i, (c, m) in enumerate(pattern)
    ]
    # device novelty over 30 days, edge exactly 30 days after
    rows += [
        tx("n0", x, card="c9", device="d2"),
        tx("n1", x + 30 * DAY_MS - 1, card="c9", device="d2"),
        tx("n2", x + 60 * DAY_MS - 1, card="c9", device="d2"),
        tx("n3", x + 60 * DAY_MS, card="c9", device="d3"),
        tx("n4", x + 60 * DAY_MS + 1, card="c9", device="d2"),
    ]
    got = features(rows)
    check(
        got,
        {
            "device_distinct_cards_1h": [1, 2, 2, 3, 2, 1, 1, 1, 1, 1],
            "ip_distinct_cards_1h": [1, 2, 2, 3, 2, NAN, NAN, NAN, NAN, NAN],
            "device_new_for_card": [1, 1, 0, 1, 0, 1, 0, 1, 1, 0],
            "card_distinct_terminals_1d": [1] * 10,
        },
    )


def test_merchant_category_risk_uses_utc_days_36_to_7_before_today() -> None:
    d0 = T0 + 10 * DAY_MS  # a UTC midnight
    f = tx("f", d0 + 23 * HOUR_MS, mcc="5999", card="cf")
    g = tx("g", d0 + HOUR_MS, mcc="5999", card="cg")
    h = tx("h", d0 + 2 * DAY_MS, mcc="5999", card="ch")
    times = [7 * DAY_MS - 1, 7 * DAY_MS, 36 * DAY_MS + 23 * HOUR_MS, 37 * DAY_MS]
    times += [12 * DAY_MS - 1, 12 * DAY_MS]
    rows = [f, g, h] + [
        tx(f"s{i + 1}", d0 + o, mcc="5999", card="cs", terminal=f"T{i}")
        for i, o in enumerate(times)
    ]
    label_rows = [label(f, d0 + DAY_MS, True), label(h, d0 + 12 * DAY_MS, True)]
    got = features(rows, label_rows)
    check(
        got,
        {
            #             f  g  h  s1 s2   s3     s4   s5     s6
            "mcc_risk_30d": [0, 0, 0, 0, 0.5, 2 / 7, 0.2, 1 / 3, 2 / 3],
        },
    )


def test_calendar_flags_use_utc() -> None:
    saturday = T0 + 5 * DAY_MS
    times = [
        saturday + 7 * HOUR_MS - 1,  # Saturday 06:59:59.999
        saturday + 7 * HOUR_MS,  # Saturday 07:00
        saturday + 2 * DAY_MS - 1,  # Sunday 23:59:59.999
        saturday + 2 * DAY_MS,  # Monday 00:00
        saturday - 1,  # Friday 23:59:59.999
    ]
    got = features([tx(f"w{i}", t, card=f"c{i}") for i, t in enumerate(times)])
    check(got, {"tx_during_weekend": [1, 1, 1, 0, 0], "tx_during_night": [1, 0, 0, 1, 0]})


def test_amounts_are_summed_exactly_and_zero_mean_ratio_is_nan() -> None:
    x = T0 + HOUR_MS
    got = features([tx(f"z{i}", x + i, amount=0.0) for i in range(2)] + [tx("z2", x + 2, amount=5)])
    check(got, {"amount_to_card_mean_30d": [NAN, NAN, 3.0]})
    check(got, {"card_mean_1d_to_30d": [NAN, NAN, 1.0], "card_mean_7d_to_30d": [NAN, NAN, 1.0]})
    got = features([tx(f"a{i}", x + i, amount=a) for i, a in enumerate((0.1, 0.2, 0.3))])
    assert got["card_avg_amount_1d"][2] == 0.2  # (600 milli / 3) / 1000, exactly
    assert got["card_avg_amount_1d"][1] == 0.15


def test_history_row_order_does_not_matter_and_empty_history() -> None:
    rows = [tx(f"r{i}", T0 + (i % 3) * DAY_MS + (i % 2), terminal=f"T{i % 2}") for i in range(9)]
    a = offline_matrix(history(rows))
    b = offline_matrix(history(rows[::-1]))
    assert_same(a, b[::-1])
    empty = build_features(history([]))
    assert empty.height == 0
    assert empty.columns == ["transaction_id", *FEATURE_NAMES]
    assert replay_twin(history([])).shape == (0, len(FEATURE_NAMES))


def test_repeated_transaction_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="repeated transaction ids"):
        build_features(history([tx("a", T0), tx("a", T0 + 1)]))


# ------------------------------------------------------------------------ generated

_DAYS = [0, 1, 6, 7, 8, 14, 29, 30, 31, 36, 37, 38, 44]
_ID_PREFIXES = ["a", "B", "z", "A.", "9_", "b:"]
_LOCATIONS: list[tuple[float | None, float | None]] = [
    (None, None),
    (0.0, 0.0),
    (0.0, 1.0),
    (48.8566, 2.3522),
    (-33.9, 151.2),
    (10.0, None),
]
_LABEL_DELAYS = [0, 1, DAY_MS, 7 * DAY_MS - 1, 7 * DAY_MS, 7 * DAY_MS + 1, 10 * DAY_MS]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    n = draw(st.integers(1, 40))
    rows = []
    for i in range(n):
        day = draw(st.one_of(st.sampled_from(_DAYS), st.integers(0, 45)))
        hour = draw(st.sampled_from([0, 1, 2, 23]))
        ms = draw(st.sampled_from([0, 0, 1, -1, 999, 30_000]))
        lat, lon = draw(st.sampled_from(_LOCATIONS))
        rows.append(
            tx(
                draw(st.sampled_from(_ID_PREFIXES)) + str(i),
                T0 + day * DAY_MS + hour * HOUR_MS + ms,
                card=draw(st.sampled_from(["c1", "c2", "c3"])),
                terminal=draw(st.sampled_from(["T1", "T2", "T3"])),
                amount=draw(st.integers(0, 30_000)) / 100,
                device=draw(st.sampled_from([None, "d1", "d2"])),
                ip=draw(st.sampled_from([None, "10.0.0.1", "10.0.0.2"])),
                mcc=draw(st.sampled_from([None, "5411", "5812"])),
                lat=lat,
                lon=lon,
            )
        )
    label_rows = []
    for row in rows:
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
            delay = draw(st.sampled_from(_LABEL_DELAYS)) + draw(st.sampled_from([0, 0, HOUR_MS]))
            label_rows.append(label(row, row["event_time_ms"] + delay, draw(st.booleans())))
    if draw(st.booleans()):  # a label of a transaction the history does not hold
        ghost = tx("ghost", T0 + draw(st.integers(0, 20)) * DAY_MS, terminal="T1", mcc="5411")
        label_rows.append(label(ghost, ghost["event_time_ms"] + DAY_MS, True))
    label_rows = draw(st.permutations(label_rows))
    return rows, label_rows, draw(st.sampled_from([1, 3, 256]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_offline_equals_twin_on_generated_histories(
    scenario: tuple[list[dict[str, Any]], list[dict[str, Any]], int],
) -> None:
    rows, label_rows, batch = scenario
    hist, labs = history(rows), labels(label_rows)
    assert_same(
        replay_twin(hist, labs, batch),
        offline_matrix(hist, labs),
        ids=hist["transaction_id"].to_list(),
    )
