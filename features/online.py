"""The online feature store: Redis, one server-side script call per micro-batch.

``compute`` sends the whole batch to ``online.lua`` (EVALSHA; one round trip), which
computes every feature of :data:`features.definitions.FEATURES` for each transaction in
turn and records it, so a transaction sees the ones before it in the same batch.

State, per entity (``<prefix>`` is ``settings.features.key_prefix``):

===============================  ========================================================
key                              holds
===============================  ========================================================
``<p>:c:<card>:z``               card event log: sorted set, score event ms, member id
``<p>:c:<card>:h``               hash: id -> msgpack [cum count, cum milli-sum, terminal,
                                 device, lat, lon]; ``!maxt``, ``!basec``/``!bases``
                                 (cumulative totals of trimmed events), ``!trim``, and
                                 ``#<device>`` -> last time the card used it
``<p>:t:<terminal>:z`` / ``:f``  terminal event log / known-fraud log (sorted sets);
                                 ``:l``: label time of each labelled transaction's
                                 current label (the latest label time wins)
``<p>:d:<device>:z``             device log, member ``id\\0card`` (1 hour)
``<p>:i:<ip>:z``                 IP log, member ``id\\0card`` (1 hour)
``<p>:m:<mcc>``                  hash ``n:<day>`` / ``f:<day>``: UTC-day buckets;
                                 ``s:<day>``: that day's 30-day sums, cached until
                                 a label or a week-late payment changes them;
                                 ``!d``: the newest day counted
===============================  ========================================================

Trailing card windows cost two lookups whatever their length: each event stores the
cumulative count and sum of its card up to itself, and a window is the difference
with the last event before its start. Delayed terminal windows are ``ZCOUNT``s.

**Bounded memory.** Each log is trimmed, as its entity's newest event advances, to what
its longest window needs plus the allowed lateness (card 30 days, terminal 37 days,
device/IP 1 hour, merchant category 38 day buckets), and every key has a TTL of that
span plus a day so idle entities disappear. Measured bytes per card and terminal are in
``benchmarks/bench_feature_store.py``'s report.

**Event time and lateness.** A transaction older than its card's newest event (but
within ``allowed_lateness``) still gets exact features: it is placed by event time and
the cumulative totals after it are corrected. Later than that, it gets features from
what is still retained and is counted (``too_late``).

**Atomicity.** Redis runs a script alone; the script validates every argument before
its first write, and one that starts after the caller's deadline writes nothing. So a
batch is recorded whole or not at all. A call that timed out on the client may still
have been recorded whole (it started in time); recording is idempotent by transaction
id, so computing the same transactions again neither double counts nor changes them.
Requires a standalone Redis (or a cluster where all keys share a slot): the script
touches keys it derives itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import msgspec
import numpy as np

from features.definitions import DEFINITIONS_HASH, FEATURE_NAMES
from features.matrix import FeatureMatrix
from features.table import amount_milli, epoch_ms
from fraudstream.errors import FeatureStoreError, FeatureStoreTimeout, FeatureStoreUnavailable
from fraudstream.wire.schemas import LabelEvent, Transaction

_FIELDS_PER_TX = 11  # must match NF in online.lua
_ROW_WIDTH = len(FEATURE_NAMES)


def _script(name: str) -> str:
    return resources.files("features").joinpath(name).read_text(encoding="utf-8")


def _opt(value: object) -> str:
    return "" if value is None else str(value)


def _float(value: float | None) -> str:
    return "" if value is None else repr(float(value))


class RedisFeatureStore:
    """:class:`features.store.FeatureStore` on Redis.

    ``client`` is a redis-py ``Redis`` whose socket timeout is the store's timeout
    (:func:`redis_client_for` builds one from settings); ``timeout_ms`` also becomes the
    deadline after which the server refuses to start the batch.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = "fs",
        allowed_lateness_ms: int = 300_000,
        timeout_ms: float = 50.0,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._lateness = int(allowed_lateness_ms)
        self._timeout_ms = timeout_ms
        self._compute = client.register_script(_script("online.lua"))
        self._labels = client.register_script(_script("labels.lua"))
        self.too_late = 0  # transactions later than the allowed lateness, so far

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    @property
    def allowed_lateness_ms(self) -> int:
        return self._lateness

    @property
    def definitions_hash(self) -> str:
        return DEFINITIONS_HASH

    def compute(self, transactions: Sequence[Transaction]) -> FeatureMatrix:
        if not transactions:
            return FeatureMatrix.empty(FEATURE_NAMES, 0)
        deadline_us = int((time.time() + self._timeout_ms / 1000.0) * 1_000_000)
        args: list[str | int] = [self._prefix, self._lateness, deadline_us, len(transactions)]
        for tx in transactions:
            located = tx.latitude is not None and tx.longitude is not None
            args += (
                tx.transaction_id,
                epoch_ms(tx.event_time),
                tx.card_id,
                tx.terminal_id,
                repr(float(tx.amount)),
                amount_milli(tx.amount),
                _opt(tx.device_id),
                _opt(tx.ip),
                _opt(tx.mcc),
                _float(tx.latitude) if located else "",
                _float(tx.longitude) if located else "",
            )
        reply = self._call(self._compute, args)
        if reply == b"EXPIRED":
            raise FeatureStoreTimeout(self._timeout_ms)
        decoded = msgspec.msgpack.decode(reply)
        self.too_late += int(decoded[0])
        values = np.asarray(decoded[1:], dtype=np.float64)
        if values.shape[0] != len(transactions) * _ROW_WIDTH:
            raise FeatureStoreError(
                f"feature script returned {values.shape[0]} values for "
                f"{len(transactions)} transactions x {_ROW_WIDTH} features"
            )
        return FeatureMatrix(FEATURE_NAMES, values.reshape(len(transactions), _ROW_WIDTH))

    def apply_labels(self, labels: Sequence[LabelEvent]) -> int:
        if not labels:
            return 0
        args: list[str | int] = [self._prefix, self._lateness, len(labels)]
        for label in labels:
            args += (
                label.transaction_id,
                label.terminal_id,
                _opt(label.mcc),
                epoch_ms(label.event_time),
                "1" if label.is_fraud else "0",
                epoch_ms(label.label_time),
            )
        return int(self._call(self._labels, args))

    def _call(self, script: Any, args: list[str | int]) -> Any:
        import redis

        try:
            return script(keys=[], args=args)
        except redis.TimeoutError as exc:
            raise FeatureStoreTimeout(self._timeout_ms) from exc
        except redis.ConnectionError as exc:
            raise FeatureStoreUnavailable(str(exc) or type(exc).__name__) from exc
        except redis.RedisError as exc:
            raise FeatureStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


def redis_client_for(
    url: str, *, timeout_ms: float, connect_timeout_ms: float, **extra: Any
) -> Any:
    """A redis-py client whose every call gives up after ``timeout_ms``.

    No client-side retries: redis-py retries a failed connection three times with
    backoff by default, which turns a 50 ms budget into seconds. The circuit breaker
    decides when to try again, not the client.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_ms / 1000.0,
        socket_connect_timeout=connect_timeout_ms / 1000.0,
        retry=Retry(NoBackoff(), 0),
        **extra,
    )
