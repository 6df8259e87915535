"""The in-memory twin of the online feature store, for tests and backtests.

A deliberately plain second implementation of :mod:`features.definitions`: one
transaction at a time, per-entity lists kept sorted by the event order ``(t, id)`` and
searched with :mod:`bisect`, windows summed by walking them. Nothing is shared with the
vectorised offline builder (:mod:`features.offline`) except the definitions, so the two
agreeing is evidence that both follow the semantics.

What each transaction sees: every transaction computed before it (earlier batches and
earlier rows of its batch) that is not ordered after it, plus itself; labels applied
before it. Recording is idempotent by transaction id. State is trimmed, as each entity's
newest event advances, to :data:`RETENTION_MS` plus the allowed lateness, and entities
idle for longer than that are dropped (the online store's key TTL), so memory stays
bounded over a long run while a transaction late by up to the allowed lateness still
gets exact features.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from features.definitions import (
    AMOUNT_SCALE,
    CARD_HISTORY_MS,
    DAY_MS,
    DEFINITIONS_HASH,
    EARTH_RADIUS_KM,
    FEATURE_NAMES,
    HOUR_MS,
    LABEL_DELAY_MS,
    MIN_SPEED_INTERVAL_S,
    RETENTION_MS,
    by_name,
)
from features.matrix import FeatureMatrix
from features.table import amount_milli, epoch_ms
from fraudstream.wire.schemas import LabelEvent, Transaction

T = TypeVar("T")
NAN = math.nan
_STREAK_WINDOW_MS = by_name("terminal_fraud_streak").window_ms or 0


@dataclass(frozen=True)
class _Event:
    t: int
    id: str
    card: str
    terminal: str
    amount: float
    milli: int
    device: str | None
    ip: str | None
    mcc: str | None
    location: tuple[float, float] | None


@dataclass
class _Label:
    label_time: int
    is_fraud: bool
    t: int
    terminal: str
    mcc: str | None


@dataclass
class _Log(Generic[T]):
    """One entity's entries, sorted by ``(t, id)``, with a payload each."""

    keys: list[tuple[int, str]] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    data: list[T] = field(default_factory=list)
    newest: int = -(2**62)

    def add(self, t: int, id_: str, payload: T) -> bool:
        i = bisect_left(self.keys, (t, id_))
        if i < len(self.keys) and self.keys[i] == (t, id_):
            return False
        self.keys.insert(i, (t, id_))
        self.times.insert(i, t)
        self.data.insert(i, payload)
        self.newest = max(self.newest, t)
        return True

    def remove(self, t: int, id_: str) -> bool:
        i = bisect_left(self.keys, (t, id_))
        if i < len(self.keys) and self.keys[i] == (t, id_):
            del self.keys[i], self.times[i], self.data[i]
            return True
        return False

    def end(self, t: int, id_: str) -> int:
        """Position just after ``(t, id_)``: entries not ordered after it are before."""
        return bisect_right(self.keys, (t, id_))

    def after(self, time: int) -> int:
        """First position with a time strictly greater than ``time``."""
        return bisect_right(self.times, time)

    def between(self, low: int, high: int) -> int:
        """Entries with ``low < time <= high``."""
        return self.after(high) - self.after(low)

    def holds(self, key: tuple[int, str]) -> bool:
        i = bisect_left(self.keys, key)
        return i < len(self.keys) and self.keys[i] == key

    def trim(self, cutoff: int) -> list[tuple[tuple[int, str], T]]:
        """Drop (and return) the entries older than ``cutoff``."""
        i = bisect_left(self.times, cutoff)
        gone = list(zip(self.keys[:i], self.data[:i], strict=True))
        del self.keys[:i], self.times[:i], self.data[:i]
        return gone


def _haversine(a: tuple[float, float], b: tuple[float, float]) -> float:
    # Same operation order as the online script and the offline builder.
    p1 = a[0] * math.pi / 180
    p2 = b[0] * math.pi / 180
    dp = (b[0] - a[0]) * math.pi / 180
    dl = (b[1] - a[1]) * math.pi / 180
    s1, s2 = math.sin(dp / 2), math.sin(dl / 2)
    h = s1 * s1 + math.cos(p1) * math.cos(p2) * s2 * s2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _calendar(t: int) -> tuple[float, float]:
    days = t // DAY_MS
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    hour = (t - days * DAY_MS) // HOUR_MS
    return float(weekday >= 5), float(hour <= 6)


class InMemoryFeatureStore:
    """:class:`features.store.FeatureStore` in process memory (single-threaded)."""

    def __init__(self, allowed_lateness_ms: int = 300_000) -> None:
        self._lateness = int(allowed_lateness_ms)
        self._seen: dict[str, _Event] = {}
        self._cards: dict[str, _Log[_Event]] = {}
        self._terminals: dict[str, _Log[None]] = {}
        self._frauds: dict[str, _Log[None]] = {}  # per terminal: known-fraud transactions
        self._label_log: dict[str, _Log[None]] = {}  # per terminal: labelled transactions
        self._labels: dict[str, _Label] = {}
        self._devices: dict[str, _Log[str]] = {}  # payload: card id
        self._ips: dict[str, _Log[str]] = {}
        self._mcc_tx: dict[str, dict[int, int]] = {}  # mcc -> UTC day -> transactions
        self._mcc_fraud: dict[str, dict[int, int]] = {}  # mcc -> UTC day -> known frauds
        self._mcc_newest: dict[str, int] = {}
        self._newest = -(2**62)
        self._swept_day = -(2**62)
        self.too_late = 0  # transactions later than the allowed lateness, so far

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    @property
    def definitions_hash(self) -> str:
        return DEFINITIONS_HASH

    # ---------------------------------------------------------------- transactions

    def compute(self, transactions: Sequence[Transaction]) -> FeatureMatrix:
        rows = [self._compute_one(tx) for tx in transactions]
        values = np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))
        return FeatureMatrix(FEATURE_NAMES, values)

    def _compute_one(self, tx: Transaction) -> list[float]:
        event = self._seen.get(tx.transaction_id)
        if event is None:
            location = None
            if tx.latitude is not None and tx.longitude is not None:
                location = (tx.latitude, tx.longitude)
            event = _Event(
                t=epoch_ms(tx.event_time),
                id=tx.transaction_id,
                card=tx.card_id,
                terminal=tx.terminal_id,
                amount=float(tx.amount),
                milli=amount_milli(tx.amount),
                device=tx.device_id,
                ip=tx.ip,
                mcc=tx.mcc,
                location=location,
            )
            self._record(event)
        feats = self._features(event)
        return [feats[name] for name in FEATURE_NAMES]

    def _record(self, e: _Event) -> None:
        card = self._cards.setdefault(e.card, _Log())
        if e.t < card.newest - self._lateness:
            self.too_late += 1
        self._seen[e.id] = e
        card.add(e.t, e.id, e)
        # Never trim the event being recorded: one later than the retention still counts
        # itself in its own windows (until the card's next event trims it).
        cutoff = min(card.newest - RETENTION_MS["card"] - self._lateness, e.t)
        for _, gone in card.trim(cutoff):
            self._seen.pop(gone.id, None)

        term = self._terminals.setdefault(e.terminal, _Log())
        term.add(e.t, e.id, None)
        self._trim_terminal(e.terminal)

        for logs, key in ((self._devices, e.device), (self._ips, e.ip)):
            if key is not None:
                log = logs.setdefault(key, _Log())
                log.add(e.t, e.id, e.card)
                log.trim(min(log.newest - HOUR_MS - self._lateness, e.t))

        if e.mcc is not None:
            days = self._mcc_tx.setdefault(e.mcc, {})
            day = e.t // DAY_MS
            days[day] = days.get(day, 0) + 1
            newest = max(self._mcc_newest.get(e.mcc, e.t), e.t)
            self._mcc_newest[e.mcc] = newest
            first_kept = (newest - RETENTION_MS["mcc"] - self._lateness) // DAY_MS
            for table in (days, self._mcc_fraud.get(e.mcc, {})):
                for old in [d for d in table if d < first_kept]:
                    del table[old]

        self._newest = max(self._newest, e.t)
        if self._newest // DAY_MS > self._swept_day:
            self._sweep()

    def _trim_terminal(self, terminal: str) -> None:
        newest = self._terminals[terminal].newest
        cutoff = newest - RETENTION_MS["terminal"] - self._lateness
        self._terminals[terminal].trim(cutoff)
        if terminal in self._frauds:
            self._frauds[terminal].trim(cutoff)
        if terminal in self._label_log:
            for (_, id_), _ in self._label_log[terminal].trim(cutoff):
                self._labels.pop(id_, None)

    def _sweep(self) -> None:
        """Forget entities idle for longer than their retention (the online key TTL)."""
        self._swept_day = self._newest // DAY_MS
        late = self._lateness + DAY_MS

        def idle(logs: dict[str, _Log[T]], retention: int) -> list[str]:
            return [k for k, log in logs.items() if log.newest < self._newest - retention - late]

        for card in idle(self._cards, RETENTION_MS["card"]):
            for gone in self._cards.pop(card).data:
                self._seen.pop(gone.id, None)
        for terminal in idle(self._terminals, RETENTION_MS["terminal"]):
            del self._terminals[terminal]
            self._frauds.pop(terminal, None)
            for _, id_ in self._label_log.pop(terminal, _Log()).keys:
                self._labels.pop(id_, None)
        for logs in (self._devices, self._ips):
            for key in idle(logs, HOUR_MS):
                del logs[key]
        stale = self._newest - RETENTION_MS["mcc"] - late
        for mcc in [m for m, t in self._mcc_newest.items() if t < stale]:
            del self._mcc_newest[mcc]
            self._mcc_tx.pop(mcc, None)
            self._mcc_fraud.pop(mcc, None)
        self._sweep_orphan_labels(late)

    def _sweep_orphan_labels(self, late: int) -> None:
        """Labels can arrive for a terminal or merchant category with no transactions
        held (swept as idle, or never seen here): forget them too once they are older
        than every window, or they would pile up over a long run."""
        cutoff = self._newest - RETENTION_MS["terminal"] - late
        for terminal, log in list(self._label_log.items()):
            if terminal not in self._terminals and log.newest < cutoff:
                del self._label_log[terminal]
                self._frauds.pop(terminal, None)
                for _, id_ in log.keys:
                    self._labels.pop(id_, None)
        first_day = (self._newest - RETENTION_MS["mcc"] - late) // DAY_MS
        for mcc in [m for m in self._mcc_fraud if m not in self._mcc_newest]:
            table = self._mcc_fraud[mcc]
            for day in [d for d in table if d < first_day]:
                del table[day]
            if not table:
                del self._mcc_fraud[mcc]

    def _features(self, e: _Event) -> dict[str, float]:
        t = e.t
        out: dict[str, float] = {"amount": e.amount}
        out["tx_during_weekend"], out["tx_during_night"] = _calendar(t)

        card = self._cards[e.card]
        end = card.end(t, e.id)
        means: dict[int, float] = {}
        for days in (1, 7, 30):
            lo = card.after(t - days * DAY_MS)
            window = card.data[lo:end]
            total = sum(x.milli for x in window)
            mean = (total / len(window)) / AMOUNT_SCALE
            out[f"card_nb_tx_{days}d"] = float(len(window))
            out[f"card_avg_amount_{days}d"] = mean
            means[days] = mean
            if days == 30:
                out["amount_to_card_mean_30d"] = e.amount / mean if total != 0 else NAN
                for short in (1, 7):
                    ratio = means[short] / mean if total != 0 else NAN
                    out[f"card_mean_{short}d_to_30d"] = ratio
            if days == 1:
                out["card_distinct_terminals_1d"] = float(len({x.terminal for x in window}))
            if days == 30:
                earlier = window[:-1]
                out["device_new_for_card"] = (
                    NAN if e.device is None else float(all(x.device != e.device for x in earlier))
                )

        out["secs_since_prev_card_tx"] = out["geo_distance_km"] = out["geo_speed_kmh"] = NAN
        if end >= 2 and card.times[end - 2] > t - CARD_HISTORY_MS:
            prev = card.data[end - 2]
            secs = (t - prev.t) / 1000
            out["secs_since_prev_card_tx"] = secs
            if e.location is not None and prev.location is not None:
                dist = _haversine(prev.location, e.location)
                out["geo_distance_km"] = dist
                out["geo_speed_kmh"] = dist / (max(secs, MIN_SPEED_INTERVAL_S) / 3600)

        # .get: a redelivered transaction's terminal may have been swept as idle since
        term = self._terminals.get(e.terminal, _Log[None]())
        frauds = self._frauds.get(e.terminal, _Log[None]())
        for days in (1, 7, 30):
            low, high = t - LABEL_DELAY_MS - days * DAY_MS, t - LABEL_DELAY_MS
            count = term.between(low, high)
            known = frauds.between(low, high)
            out[f"terminal_nb_tx_{days}d"] = float(count)
            out[f"terminal_risk_{days}d"] = known / count if count else 0.0
        streak, low = 0, t - LABEL_DELAY_MS - _STREAK_WINDOW_MS
        for i in range(term.after(t - LABEL_DELAY_MS) - 1, term.after(low) - 1, -1):
            if not frauds.holds(term.keys[i]):
                break
            streak += 1
        out["terminal_fraud_streak"] = float(streak)

        out["device_distinct_cards_1h"] = self._distinct_cards(self._devices, e.device, e)
        out["ip_distinct_cards_1h"] = self._distinct_cards(self._ips, e.ip, e)
        out["mcc_risk_30d"] = self._mcc_risk(e)
        return out

    def _distinct_cards(self, logs: dict[str, _Log[str]], key: str | None, e: _Event) -> float:
        if key is None:
            return NAN
        # The card of this transaction always counts, even when a redelivery comes after
        # the device / ip went idle and was swept.
        log = logs.get(key, _Log[str]())
        window = log.data[log.after(e.t - HOUR_MS) : log.end(e.t, e.id)]
        return float(len({e.card, *window}))

    def _mcc_risk(self, e: _Event) -> float:
        if e.mcc is None:
            return NAN
        today = e.t // DAY_MS
        days = range(today - 36, today - 6)

        def get(table: dict[int, int]) -> int:
            return sum(table.get(d, 0) for d in days)

        count = get(self._mcc_tx.get(e.mcc, {}))
        return get(self._mcc_fraud.get(e.mcc, {})) / count if count else 0.0

    # ---------------------------------------------------------------------- labels

    def apply_labels(self, labels: Sequence[LabelEvent]) -> int:
        """Keep the latest label (by label time; the later applied on ties) of each
        transaction; returns how many labels changed a transaction's known-fraud status."""
        return sum(self._apply_one(label) for label in labels)

    def _apply_one(self, label: LabelEvent) -> bool:
        t = epoch_ms(label.event_time)
        label_time = epoch_ms(label.label_time)
        term = self._terminals.get(label.terminal_id)
        # A terminal with no transactions held counts as swept: as of a day before now.
        newest = term.newest if term is not None else self._newest - DAY_MS
        if t < newest - RETENTION_MS["terminal"] - self._lateness:
            return False  # older than every risk window: it can change nothing
        current = self._labels.get(label.transaction_id)
        if current is not None and label_time < current.label_time:
            return False  # an older verdict than the one we hold
        new = _Label(label_time, label.is_fraud, t, label.terminal_id, label.mcc)
        self._labels[label.transaction_id] = new
        self._label_log.setdefault(new.terminal, _Log()).add(t, label.transaction_id, None)
        if current is not None and current.is_fraud:
            if new.is_fraud:
                return False
            self._count_fraud(current, label.transaction_id, -1)  # where it was counted
            return True
        if not new.is_fraud:
            return False
        self._count_fraud(new, label.transaction_id, +1)
        return True

    def _count_fraud(self, label: _Label, id_: str, delta: int) -> None:
        frauds = self._frauds.setdefault(label.terminal, _Log())
        if delta > 0:
            frauds.add(label.t, id_, None)
        else:
            frauds.remove(label.t, id_)
        if label.mcc is not None:
            table = self._mcc_fraud.setdefault(label.mcc, {})
            day = label.t // DAY_MS
            table[day] = table.get(day, 0) + delta

    # -------------------------------------------------------------------- inspection

    def state_size(self) -> int:
        """Entries held across all entities (for memory-bound tests)."""
        logs: list[dict[str, _Log[_Event]] | dict[str, _Log[None]] | dict[str, _Log[str]]] = [
            self._cards,
            self._terminals,
            self._frauds,
            self._label_log,
            self._devices,
            self._ips,
        ]
        entries = sum(len(log.keys) for group in logs for log in group.values())
        buckets = sum(len(d) for d in self._mcc_tx.values()) + sum(
            len(d) for d in self._mcc_fraud.values()
        )
        return entries + buckets + len(self._seen) + len(self._labels)
