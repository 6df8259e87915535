"""The offline feature builder: every feature of a whole history table at once.

:func:`build_features` computes exactly what the online store and the twin compute for
each transaction when the history is replayed in event order (labels by label time,
first on ties), but vectorised: a handful of sorts and ``searchsorted`` calls per
definition, O(N log N), no Python loop per row.

How the windows are found. Rows of one entity (card, terminal, ...) are sorted by the
global event order ``(event_time_ms, transaction_id)``; a combined int64 key
``entity_code * span + (t - t_min) + 1`` makes one sorted array for all entities, so a
single ``searchsorted`` finds a time boundary inside each row's own entity. Queries are
clipped to ``[0, range + 2]`` before the entity offset is added, so a boundary beyond the
history's time range never reaches a neighbouring entity.

* Trailing count ``(t - n, t]`` up to the row itself: ``pos + 1 - first(t' > t - n)``;
  sums are differences of an int64 cumulative sum of milli-amounts (exact).
* Delayed count ``(t - D - n, t - D]``: two ``searchsorted(..., 'right')``.
* Known frauds: a label of transaction x is valid from its ``label_time`` until the
  next label of x; a fraud-valued validity interval adds 1 to the terminal's events e
  with ``t_e`` in ``[max(label_time, t_x + D), min(next_label_time, t_x + D + n))``
  (the events whose delayed window holds x while the label is known): a difference
  array over the terminal's events. Merchant-category risk is the same with UTC days.
* Fraud streak: each fraud label's validity interval is attached to the event it
  names; the walk back from the window's last event takes one vectorised step per
  event of the longest run, over the rows whose run is still going.
* Distinct values in a trailing window: an occurrence r of a pair (entity, value) is
  the pair's *last* occurrence in the window of every row p with ``r <= p < next(r)``
  (next occurrence of the pair) and ``t_p < t_r + n``; that is an interval of positions,
  so counting "last occurrences" is again a difference array, exact with ties.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import polars as pl

from features.definitions import (
    AMOUNT_SCALE,
    CARD_HISTORY_MS,
    DAY_MS,
    EARTH_RADIUS_KM,
    FEATURE_NAMES,
    HOUR_MS,
    LABEL_DELAY_MS,
    MIN_SPEED_INTERVAL_S,
    by_name,
)
from features.table import HISTORY_SCHEMA, LABEL_SCHEMA, calendar_flags

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

_CARD_WINDOWS_DAYS = (1, 7, 30)
_TERMINAL_WINDOWS_DAYS = (1, 7, 30)
_STREAK_WINDOW_MS = by_name("terminal_fraud_streak").window_ms or 0
_MCC_FIRST_DAY = 36  # merchant-category window: UTC days [today - 36, today - 7]
_MCC_LAST_DAY = 7
_NO_LABEL_AFTER = np.iinfo(np.int64).max // 4  # "valid forever" for a transaction's last label


def _codes(values: pl.Series, domain: pl.Series) -> I64:
    """Integer code of each value in ``domain`` (sorted, unique); -1 for null / unknown."""
    mapping = pl.DataFrame({"v": domain, "code": np.arange(domain.len(), dtype=np.int64)})
    joined = pl.DataFrame({"v": values.cast(pl.Utf8)}).join(
        mapping, on="v", how="left", maintain_order="left"
    )
    return joined["code"].fill_null(-1).to_numpy().astype(np.int64)


def _domain(*columns: pl.Series) -> pl.Series:
    return pl.concat([c.cast(pl.Utf8) for c in columns]).drop_nulls().unique().sort()


class _Entity:
    """The rows of one kind of entity (null-keyed rows left out), in event order per entity.

    ``rows[i]`` is the input row at sorted position ``i``; ``start[i]`` the position where
    that entity's run begins.
    """

    def __init__(self, code: I64, t: I64, order: I64, t_min: int, span: int) -> None:
        n = len(code)
        keep = np.flatnonzero(code >= 0)
        # order is each row's rank in the global event order, so (code, order) sorts each
        # entity's rows by (event_time_ms, transaction_id).
        self.rows: I64 = keep[np.argsort(code[keep] * n + order[keep], kind="stable")]
        self.code: I64 = code[self.rows]
        self.t: I64 = t[self.rows]
        self._t_min = t_min
        self._span = span
        self.key: I64 = self._query_key(self.code, self.t)
        self.pos: I64 = np.arange(len(self.rows), dtype=np.int64)
        self.start: I64 = np.searchsorted(self.code, self.code, "left").astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def _query_key(self, code: I64, tq: I64) -> I64:
        rel = np.clip(tq - self._t_min + 1, 0, self._span - 1)
        return code * self._span + rel

    def find(self, code: I64, tq: I64, side: str) -> I64:
        """Position of time ``tq`` in entity ``code``'s run (``searchsorted`` semantics)."""
        key = self._query_key(code, tq)
        if side == "left":
            return np.searchsorted(self.key, key, "left").astype(np.int64)
        return np.searchsorted(self.key, key, "right").astype(np.int64)

    def trailing_start(self, window_ms: int) -> I64:
        """First position of each row's window ``t' > t - window_ms``."""
        return self.find(self.code, self.t - window_ms, "right")

    def scatter(self, values: F64, n_rows: int) -> F64:
        out = np.full(n_rows, np.nan)
        out[self.rows] = values
        return out

    def pair_links(self, other: I64) -> tuple[I64, I64]:
        """Previous / next position of the same (entity, other) pair in this order
        (-1 / len when none); ``other`` is per sorted position, -1 for null (no pair)."""
        m = len(self.rows)
        prev = np.full(m, -1, dtype=np.int64)
        nxt = np.full(m, m, dtype=np.int64)
        idx = np.flatnonzero(other >= 0)
        if len(idx) < 2:
            return prev, nxt
        o = idx[np.lexsort((idx, other[idx], self.code[idx]))]
        same = (self.code[o[1:]] == self.code[o[:-1]]) & (other[o[1:]] == other[o[:-1]])
        prev[o[1:][same]] = o[:-1][same]
        nxt[o[:-1][same]] = o[1:][same]
        return prev, nxt

    def distinct_in_window(self, other: I64, window_ms: int) -> F64:
        """Distinct non-null ``other`` values over each row's trailing window."""
        m = len(self.rows)
        _, nxt = self.pair_links(other)
        r = np.flatnonzero(other >= 0)
        hi = self.find(self.code[r], self.t[r] + window_ms, "left")
        end = np.minimum(nxt[r], hi)
        diff = np.bincount(r, minlength=m + 1) - np.bincount(end, minlength=m + 1)
        return np.cumsum(diff)[:m].astype(np.float64)

    def interval_counts(self, code: I64, lo_t: I64, hi_t: I64) -> F64:
        """For each position, how many intervals ``[lo_t, hi_t)`` of its own entity hold
        its time (intervals given per entity ``code``; empty ones count nothing)."""
        m = len(self.rows)
        ok = (code >= 0) & (lo_t < hi_t)
        lo = self.find(code[ok], lo_t[ok], "left")
        hi = self.find(code[ok], hi_t[ok], "left")
        diff = np.bincount(lo, minlength=m + 1) - np.bincount(hi, minlength=m + 1)
        return np.cumsum(diff)[:m].astype(np.float64)


def _label_intervals(labels: pl.DataFrame) -> pl.DataFrame:
    """Each label with ``valid_until``: the next label time of its transaction (the
    latest label wins; at equal label times the later row wins)."""
    lab = (
        labels.with_row_index("_row")
        .drop_nulls(["transaction_id", "label_time_ms", "event_time_ms"])
        .sort(["transaction_id", "label_time_ms", "_row"])
    )
    return lab.with_columns(
        pl.col("label_time_ms")
        .shift(-1)
        .over("transaction_id")
        .fill_null(_NO_LABEL_AFTER)
        .alias("valid_until")
    )


def _rate(frauds: F64, counts: F64) -> F64:
    out = np.zeros_like(counts)
    np.divide(frauds, counts, out=out, where=counts > 0)
    return out


def _haversine(lat1: F64, lon1: F64, lat2: F64, lon2: F64) -> F64:
    # Same operation order as the online script, so the two agree to the last bit.
    p1 = lat1 * np.pi / 180
    p2 = lat2 * np.pi / 180
    dp = (lat2 - lat1) * np.pi / 180
    dl = (lon2 - lon1) * np.pi / 180
    s1 = np.sin(dp / 2)
    s2 = np.sin(dl / 2)
    a = s1 * s1 + np.cos(p1) * np.cos(p2) * s2 * s2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a))))


def _empty() -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {"transaction_id": pl.Utf8()}
    schema.update({name: pl.Float64() for name in FEATURE_NAMES})
    return pl.DataFrame(schema=schema)


def build_features(history: pl.DataFrame, labels: pl.DataFrame | None = None) -> pl.DataFrame:
    """``transaction_id`` and every feature of :data:`FEATURE_NAMES` (Float64, NaN for
    missing) for each row of ``history`` (:data:`HISTORY_SCHEMA`), in its order.

    ``labels`` (:data:`LABEL_SCHEMA`) feed the terminal and merchant-category risk; a
    label counts for a transaction at ``t`` when its ``label_time_ms <= t``.
    """
    h = history.select([pl.col(c).cast(d) for c, d in HISTORY_SCHEMA.items()])
    n = h.height
    if n == 0:
        return _empty()
    if h["transaction_id"].n_unique() != n:
        raise ValueError("history has repeated transaction ids")
    if h["event_time_ms"].null_count() or h["amount"].null_count():
        raise ValueError("history has null event times or amounts")
    lab = (
        labels.select([pl.col(c).cast(d) for c, d in LABEL_SCHEMA.items()])
        if labels is not None
        else pl.DataFrame(schema=LABEL_SCHEMA)
    )

    t = h["event_time_ms"].to_numpy().astype(np.int64)
    order = np.empty(n, dtype=np.int64)
    order[h.with_row_index("_row").sort(["event_time_ms", "transaction_id"])["_row"].to_numpy()] = (
        np.arange(n, dtype=np.int64)
    )
    t_min = int(t.min())
    span = int(t.max()) - t_min + 3
    amount = h["amount"].to_numpy().astype(np.float64)
    milli = np.rint(amount * AMOUNT_SCALE).astype(np.int64)

    cards = _domain(h["card_id"])
    terminals = _domain(h["terminal_id"], lab["terminal_id"])
    mccs = _domain(h["mcc"], lab["mcc"])
    if max(len(cards), len(terminals), len(mccs), n) * span >= 2**62:
        raise ValueError("history spans too long a time for int64 window keys")
    card_code = _codes(h["card_id"], cards)
    term_code = _codes(h["terminal_id"], terminals)

    cols: dict[str, F64] = {"amount": amount}
    cols["tx_during_weekend"], cols["tx_during_night"] = calendar_flags(t)

    def entity(code: I64) -> _Entity:
        return _Entity(code, t, order, t_min, span)

    cols.update(_card_features(entity(card_code), h, milli, term_code))
    cols.update(_terminal_features(entity(term_code), lab, terminals, h["transaction_id"]))
    cols.update(_rich_features(h, lab, entity, card_code, mccs))

    return pl.DataFrame(
        {"transaction_id": h["transaction_id"], **{name: cols[name] for name in FEATURE_NAMES}}
    )


def _card_features(card: _Entity, h: pl.DataFrame, milli: I64, term_code: I64) -> dict[str, F64]:
    n = h.height
    out: dict[str, F64] = {}
    csum = np.concatenate([[0], np.cumsum(milli[card.rows])])
    amount = h["amount"].to_numpy().astype(np.float64)[card.rows]
    means: dict[int, F64] = {}
    for days in _CARD_WINDOWS_DAYS:
        lo = card.trailing_start(days * DAY_MS)
        count = (card.pos + 1 - lo).astype(np.float64)
        total = csum[card.pos + 1] - csum[lo]
        mean = (total / count) / AMOUNT_SCALE
        out[f"card_nb_tx_{days}d"] = card.scatter(count, n)
        out[f"card_avg_amount_{days}d"] = card.scatter(mean, n)
        means[days] = mean
        if days == 30:
            nz = total != 0
            ratio = np.full(len(card), np.nan)
            ratio[nz] = amount[nz] / mean[nz]
            out["amount_to_card_mean_30d"] = card.scatter(ratio, n)
            for short in (1, 7):
                ratio = np.full(len(card), np.nan)
                ratio[nz] = means[short][nz] / mean[nz]
                out[f"card_mean_{short}d_to_30d"] = card.scatter(ratio, n)

    # The previous transaction of the card, if within the card history window.
    has_prev = card.pos > card.start
    prev = np.where(has_prev, card.pos - 1, 0)
    has_prev &= card.t[prev] > card.t - CARD_HISTORY_MS
    secs = np.where(has_prev, (card.t - card.t[prev]) / 1000, np.nan)
    out["secs_since_prev_card_tx"] = card.scatter(secs, n)

    lat = h["latitude"].to_numpy().astype(np.float64)[card.rows]
    lon = h["longitude"].to_numpy().astype(np.float64)[card.rows]
    located = ~(np.isnan(lat) | np.isnan(lon))
    geo = has_prev & located & located[prev]
    dist = np.full(len(card), np.nan)
    dist[geo] = _haversine(lat[prev][geo], lon[prev][geo], lat[geo], lon[geo])
    speed = dist / (np.maximum(secs, MIN_SPEED_INTERVAL_S) / 3600)
    out["geo_distance_km"] = card.scatter(dist, n)
    out["geo_speed_kmh"] = card.scatter(speed, n)

    out["card_distinct_terminals_1d"] = card.scatter(
        card.distinct_in_window(term_code[card.rows], DAY_MS), n
    )

    # New device: no earlier event of the card with this device in (t - 30d, t].
    devices = _domain(h["device_id"])
    device = _codes(h["device_id"], devices)[card.rows]
    before, _ = card.pair_links(device)
    seen = (before >= 0) & (card.t[np.maximum(before, 0)] > card.t - CARD_HISTORY_MS)
    out["device_new_for_card"] = card.scatter(
        np.where(device >= 0, np.where(seen, 0.0, 1.0), np.nan), n
    )
    return out


def _terminal_features(
    term: _Entity, lab: pl.DataFrame, terminals: pl.Series, ids: pl.Series
) -> dict[str, F64]:
    n = len(ids)
    out: dict[str, F64] = {}
    fraud = _label_intervals(lab).filter(pl.col("is_fraud") == 1)
    f_code = _codes(fraud["terminal_id"], terminals)
    f_t = fraud["event_time_ms"].to_numpy().astype(np.int64)
    f_from = fraud["label_time_ms"].to_numpy().astype(np.int64)
    f_until = fraud["valid_until"].to_numpy().astype(np.int64)
    upper = term.find(term.code, term.t - LABEL_DELAY_MS, "right")
    for days in _TERMINAL_WINDOWS_DAYS:
        w = days * DAY_MS
        lower = term.find(term.code, term.t - LABEL_DELAY_MS - w, "right")
        count = (upper - lower).astype(np.float64)
        frauds = term.interval_counts(
            f_code,
            np.maximum(f_from, f_t + LABEL_DELAY_MS),
            np.minimum(f_until, f_t + LABEL_DELAY_MS + w),
        )
        out[f"terminal_nb_tx_{days}d"] = term.scatter(count, n)
        out[f"terminal_risk_{days}d"] = term.scatter(_rate(frauds, count), n)
    known = _KnownFrauds(term, ids, fraud, f_code)
    lower = term.find(term.code, term.t - LABEL_DELAY_MS - _STREAK_WINDOW_MS, "right")
    out["terminal_fraud_streak"] = term.scatter(known.streak(lower, upper), n)
    return out


class _KnownFrauds:
    """Which of an entity's events are known frauds at a given time.

    A fraud label's validity interval ``[label_time, valid_until)`` is attached to the
    event it names (same transaction id, entity and event time); intervals sorted by
    ``(position, label_time)`` answer "known fraud at q?" with one ``searchsorted``.
    """

    def __init__(self, entity: _Entity, ids: pl.Series, fraud: pl.DataFrame, f_code: I64) -> None:
        events = pl.DataFrame(
            {
                "transaction_id": ids.cast(pl.Utf8)[entity.rows.tolist()],
                "_pos": entity.pos,
                "_code": entity.code,
                "_t": entity.t,
            }
        )
        matched = (
            fraud.with_columns(pl.Series("_f_code", f_code))
            .join(events, on="transaction_id", how="inner")
            .filter(
                (pl.col("_code") == pl.col("_f_code")) & (pl.col("_t") == pl.col("event_time_ms"))
            )
        )
        pos = matched["_pos"].to_numpy().astype(np.int64)
        start = matched["label_time_ms"].to_numpy().astype(np.int64)
        until = matched["valid_until"].to_numpy().astype(np.int64)
        times = np.concatenate([start, entity.t])
        self._base = int(times.min()) if len(times) else 0
        self._span = (int(times.max()) - self._base if len(times) else 0) + 2
        if (len(entity) + 1) * self._span >= 2**62:
            raise ValueError("labels span too long a time for int64 keys")
        key = pos * self._span + (start - self._base)
        order = np.argsort(key, kind="stable")
        self._key, self._pos, self._until = key[order], pos[order], until[order]
        self._entity = entity

    def known(self, pos: I64, at: I64) -> B:
        """Is the event at each position a known fraud at time ``at``?"""
        if len(self._key) == 0:
            return np.zeros(len(pos), dtype=np.bool_)
        query = pos * self._span + np.clip(at - self._base, 0, self._span - 1)
        j = np.searchsorted(self._key, query, "right") - 1
        jj = np.maximum(j, 0)
        known: B = (j >= 0) & (self._pos[jj] == pos) & (self._until[jj] > at)
        return known

    def streak(self, lower: I64, upper: I64) -> F64:
        """Per position: events in ``[lower, upper)`` known fraud at the position's own
        time, counted back from ``upper - 1`` until the first that is not. One pass per
        step of the longest run, over the rows still counting."""
        t = self._entity.t
        out = np.zeros(len(t), dtype=np.float64)
        active = np.flatnonzero(upper > lower)
        k = upper[active] - 1
        while len(active):
            ok = (k >= lower[active]) & self.known(k, t[active])
            active, k = active[ok], k[ok] - 1
            out[active] += 1
        return out


def _rich_features(
    h: pl.DataFrame,
    lab: pl.DataFrame,
    entity: Callable[[I64], _Entity],
    card_code: I64,
    mccs: pl.Series,
) -> dict[str, F64]:
    n = h.height
    out: dict[str, F64] = {}
    for column, name in (("device_id", "device_distinct_cards_1h"), ("ip", "ip_distinct_cards_1h")):
        ent = entity(_codes(h[column], _domain(h[column])))
        out[name] = ent.scatter(ent.distinct_in_window(card_code[ent.rows], HOUR_MS), n)

    # Merchant category: events in UTC days [today - 36, today - 7], and frauds of those
    # days whose label is known now.
    mcc = entity(_codes(h["mcc"], mccs))
    today = np.floor_divide(mcc.t, DAY_MS)
    first = (today - _MCC_FIRST_DAY) * DAY_MS
    after_last = (today - _MCC_LAST_DAY + 1) * DAY_MS
    count = (mcc.find(mcc.code, after_last, "left") - mcc.find(mcc.code, first, "left")).astype(
        np.float64
    )
    fraud = _label_intervals(lab).filter((pl.col("is_fraud") == 1) & pl.col("mcc").is_not_null())
    f_code = _codes(fraud["mcc"], mccs)
    f_day = np.floor_divide(fraud["event_time_ms"].to_numpy().astype(np.int64), DAY_MS)
    frauds = mcc.interval_counts(
        f_code,
        np.maximum(
            fraud["label_time_ms"].to_numpy().astype(np.int64), (f_day + _MCC_LAST_DAY) * DAY_MS
        ),
        np.minimum(
            fraud["valid_until"].to_numpy().astype(np.int64),
            (f_day + _MCC_FIRST_DAY + 1) * DAY_MS,
        ),
    )
    out["mcc_risk_30d"] = mcc.scatter(_rate(frauds, count), n)
    return out
