"""The naive online feature store: what a first implementation would do, for comparison.

:class:`NaiveRedisFeatureStore` computes the same features as
:class:`features.online.RedisFeatureStore` (same names and order, same windows) with
plain redis-py commands: no pipeline, no server-side script, so every command is one
network round trip. Per transaction it

* records the event first (``ZADD`` into the card log, whose member carries the whole
  event: ``id|amount_milli|terminal|device|lat|lon``; ``ZADD`` into the terminal log;
  ``ZADD`` into the device / IP logs; ``HINCRBY`` of the merchant category's day
  bucket), so every trailing window includes the transaction itself;
* then asks Redis once per feature: a ``ZCOUNT`` for a count, a ``ZRANGEBYSCORE`` of
  the window for a mean, a distinct count or device novelty (aggregated in Python),
  a ``ZREVRANGEBYSCORE ... LIMIT`` for the previous transaction, an ``HMGET`` of the
  day buckets for merchant-category risk;
* and trims each log it wrote with ``ZREMRANGEBYSCORE`` (one command per log), so its
  memory is bounded by the same retention as the engine's.

For the handbook's fields that is 21 round trips per transaction (more at a terminal
with known frauds); with device, IP, location and merchant category, 32. It is not
bit-exact to the engine (two events of a card in the same millisecond, or a late event,
are not ordered by id; the known-fraud logs are not trimmed), but it does the same work
honestly: no caching between features, and no shortcut that makes it slower than it
needs to be for this design. :meth:`load` writes the same state through a pipeline, to warm it up
before a measurement (it computes nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from features.definitions import (
    CARD_HISTORY_MS,
    DAY_MS,
    DEFINITIONS_HASH,
    EARTH_RADIUS_KM,
    FEATURE_NAMES,
    HOUR_MS,
    LABEL_DELAY_MS,
    MIN_SPEED_INTERVAL_S,
    RETENTION_MS,
)
from features.matrix import FeatureMatrix
from features.table import amount_milli, epoch_ms
from fraudstream.wire.schemas import LabelEvent, Transaction

_WINDOWS_DAYS = (1, 7, 30)
_INDEX = {name: j for j, name in enumerate(FEATURE_NAMES)}
_NAN = float("nan")


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = math.radians(lat2 - lat1), math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _member(tx: Transaction) -> str:
    located = tx.latitude is not None and tx.longitude is not None
    return "|".join(
        (
            tx.transaction_id,
            str(amount_milli(tx.amount)),
            tx.terminal_id,
            tx.device_id or "",
            repr(tx.latitude) if located else "",
            repr(tx.longitude) if located else "",
        )
    )


def _fields(member: bytes | str) -> list[str]:
    text = member.decode() if isinstance(member, bytes) else member
    return text.split("|")


class NaiveRedisFeatureStore:
    """One Redis round trip per feature per transaction; the same ``compute`` signature
    as :class:`features.online.RedisFeatureStore`.

    ``round_trips`` counts the commands sent by :meth:`compute` so far.
    """

    def __init__(
        self, client: Any, *, key_prefix: str = "naive", allowed_lateness_ms: int = 300_000
    ) -> None:
        self._r = client
        self._p = key_prefix
        self._lateness = int(allowed_lateness_ms)
        self.round_trips = 0

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    @property
    def definitions_hash(self) -> str:
        return DEFINITIONS_HASH

    # --- keys ----------------------------------------------------------------------------

    def _card(self, tx: Transaction) -> str:
        return f"{self._p}:c:{tx.card_id}:z"

    def _term(self, terminal_id: str) -> str:
        return f"{self._p}:t:{terminal_id}:z"

    def _fraud(self, terminal_id: str) -> str:
        return f"{self._p}:t:{terminal_id}:f"

    def _mcc(self, mcc: str) -> str:
        return f"{self._p}:m:{mcc}"

    # --- writes (shared by compute and load) ---------------------------------------------

    def _record(self, do: Any, tx: Transaction, t: int) -> None:
        """Record ``tx`` and trim what it grew, one command each through ``do(command,
        *args)`` (a round trip each in :meth:`compute`, pipelined in :meth:`load`)."""
        card, term = self._card(tx), self._term(tx.terminal_id)
        logs = [(f"{self._p}:{k}:{v}:z", v) for k, v in (("d", tx.device_id), ("i", tx.ip))]
        do("zadd", card, {_member(tx): t})
        do("zadd", term, {tx.transaction_id: t})
        for key, value in logs:
            if value is not None:
                do("zadd", key, {f"{tx.transaction_id}|{tx.card_id}": t})
        if tx.mcc is not None:
            do("hincrby", self._mcc(tx.mcc), f"n:{t // DAY_MS}", 1)
        do("zremrangebyscore", card, "-inf", f"({t - RETENTION_MS['card'] - self._lateness}")
        do("zremrangebyscore", term, "-inf", f"({t - RETENTION_MS['terminal'] - self._lateness}")
        for key, value in logs:
            if value is not None:
                do("zremrangebyscore", key, "-inf", f"({t - HOUR_MS - self._lateness}")

    def load(self, transactions: Sequence[Transaction], chunk: int = 2_000) -> None:
        """Write ``transactions`` as :meth:`compute` would, pipelined; computes nothing."""
        for s in range(0, len(transactions), chunk):
            pipe = self._r.pipeline(transaction=False)

            def do(command: str, *args: Any, pipe: Any = pipe) -> None:
                getattr(pipe, command)(*args)

            for tx in transactions[s : s + chunk]:
                self._record(do, tx, epoch_ms(tx.event_time))
            pipe.execute()

    def apply_labels(self, labels: Sequence[LabelEvent]) -> int:
        changed = 0
        for label in labels:
            t = epoch_ms(label.event_time)
            key = self._fraud(label.terminal_id)
            if label.is_fraud:
                delta = int(self._r.zadd(key, {label.transaction_id: t}))
            else:
                delta = -int(self._r.zrem(key, label.transaction_id))
            if delta:
                changed += 1
                if label.mcc is not None:
                    self._r.hincrby(self._mcc(label.mcc), f"f:{t // DAY_MS}", delta)
        return changed

    # --- compute -------------------------------------------------------------------------

    def compute(self, transactions: Sequence[Transaction]) -> FeatureMatrix:
        out = np.full((len(transactions), len(FEATURE_NAMES)), np.nan, dtype=np.float64)
        for i, tx in enumerate(transactions):
            self._one(tx, out[i])
        return FeatureMatrix(FEATURE_NAMES, out)

    def _call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        self.round_trips += 1
        return getattr(self._r, command)(*args, **kwargs)

    def _window(self, key: str, t: int, width: int) -> list[Any]:
        """Members of ``key`` with time in ``(t - width, t]``: one round trip."""
        return list(self._call("zrangebyscore", key, f"({t - width}", t))

    def _previous(self, tx: Transaction, t: int) -> tuple[list[str], int] | None:
        """The card's latest event before ``tx`` within its history, and its time: one
        round trip."""
        got = self._call(
            "zrevrangebyscore",
            self._card(tx),
            t,
            f"({t - CARD_HISTORY_MS}",
            start=0,
            num=2,
            withscores=True,
        )
        for m, score in got:
            fields = _fields(m)
            if fields[0] != tx.transaction_id:
                return fields, int(score)
        return None

    def _one(self, tx: Transaction, row: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        t = epoch_ms(tx.event_time)
        # record first: trailing windows include the transaction itself (and trim)
        self._record(self._call, tx, t)

        def put(name: str, value: float) -> None:
            row[_INDEX[name]] = value

        days = t // DAY_MS
        put("amount", tx.amount)
        put("tx_during_weekend", 1.0 if (days + 3) % 7 >= 5 else 0.0)
        put("tx_during_night", 1.0 if (t - days * DAY_MS) // HOUR_MS <= 6 else 0.0)

        card = self._card(tx)
        for n in _WINDOWS_DAYS:
            w = n * DAY_MS
            put(f"card_nb_tx_{n}d", float(self._call("zcount", card, f"({t - w}", t)))
            events = self._window(card, t, w)
            total = sum(int(_fields(m)[1]) for m in events)
            put(f"card_avg_amount_{n}d", (total / len(events)) / 1000 if events else _NAN)

        term, fraud = self._term(tx.terminal_id), self._fraud(tx.terminal_id)
        for n in _WINDOWS_DAYS:
            lo, hi = f"({t - LABEL_DELAY_MS - n * DAY_MS}", t - LABEL_DELAY_MS
            count = int(self._call("zcount", term, lo, hi))
            frauds = int(self._call("zcount", fraud, lo, hi))
            put(f"terminal_nb_tx_{n}d", float(count))
            put(f"terminal_risk_{n}d", frauds / count if count else 0.0)
        # the run of known frauds, one transaction at a time from the latest back
        hi = t - LABEL_DELAY_MS
        run = self._call("zrevrangebyscore", term, hi, f"({hi - 30 * DAY_MS}", withscores=True)
        streak = 0
        for member, when in run:
            if self._call("zscore", fraud, member) != when:
                break
            streak += 1
        put("terminal_fraud_streak", float(streak))

        events = self._window(card, t, 30 * DAY_MS)
        total = sum(int(_fields(m)[1]) for m in events)
        mean = (total / len(events)) / 1000 if events else 0.0
        put("amount_to_card_mean_30d", tx.amount / mean if mean else _NAN)
        for n in (1, 7):  # naive: the short window is read again, one more round trip
            events = self._window(card, t, n * DAY_MS)
            short = (sum(int(_fields(m)[1]) for m in events) / len(events)) / 1000
            put(f"card_mean_{n}d_to_30d", short / mean if mean else _NAN)

        prev = self._previous(tx, t)
        put("secs_since_prev_card_tx", _NAN if prev is None else (t - prev[1]) / 1000)

        terminals = {_fields(m)[2] for m in self._window(card, t, DAY_MS)}
        put("card_distinct_terminals_1d", float(len(terminals | {tx.terminal_id})))

        if tx.device_id is not None:
            history = self._window(card, t, CARD_HISTORY_MS)
            used = any(
                f[3] == tx.device_id and f[0] != tx.transaction_id for f in map(_fields, history)
            )
            put("device_new_for_card", 0.0 if used else 1.0)
        for name, kind, value in (
            ("device_distinct_cards_1h", "d", tx.device_id),
            ("ip_distinct_cards_1h", "i", tx.ip),
        ):
            if value is not None:
                members = self._window(f"{self._p}:{kind}:{value}:z", t, HOUR_MS)
                cards = {_fields(m)[1] for m in members} | {tx.card_id}
                put(name, float(len(cards)))

        if tx.latitude is not None and tx.longitude is not None:
            for name in ("geo_distance_km", "geo_speed_kmh"):
                prev = self._previous(tx, t)  # a first implementation asks per feature
                if prev is None or not prev[0][4]:
                    continue
                (_, _, _, _, lat, lon), when = prev
                km = _haversine(float(lat), float(lon), tx.latitude, tx.longitude)
                secs = max((t - when) / 1000, MIN_SPEED_INTERVAL_S)
                put(name, km if name == "geo_distance_km" else km / (secs / 3600))

        if tx.mcc is not None:
            fields = [f"{k}:{d}" for d in range(days - 36, days - 6) for k in ("n", "f")]
            got = self._call("hmget", self._mcc(tx.mcc), fields)
            nn = sum(int(v or 0) for v in got[0::2])
            ff = sum(int(v or 0) for v in got[1::2])
            put("mcc_risk_30d", ff / nn if nn else 0.0)
