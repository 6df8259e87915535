"""Idempotent decisions: a transaction that was decided once is never decided again.

Kafka delivers at least once: after a crash or a rebalance the scoring agent reads again
what it had decided but not yet committed, and a producer that retries sends the same
transaction twice. Deciding it again could give another answer (the features moved on, a
breaker opened), so downstream would see two different decisions for one payment.

Every decision produced is remembered by transaction id, with its exact bytes, in a
changelog-backed Faust table (so it survives a restart even when Redis lost its data).
A transaction whose id is remembered is not scored: the remembered decision is produced
again, byte for byte, and counted as a dedupe hit. Downstream therefore sees at most a
duplicate message with identical content, never a different decision.

Transactions are keyed by card id, so one id always arrives on the same partition; each
entry is written to the changelog partition of its source partition, which Faust
recovers together with that partition. Entries expire ``retention_s`` after the decision
was made (processing time: redeliveries happen minutes after the decision, whatever the
event time of a replayed history says), which bounds memory; expiry is driven by the
partition's own traffic and writes tombstones, so the compacted changelog forgets too.

Everything here is pure: the agent (``streams/agents.py``) applies the returned
:class:`TableWrite` items to the table and its changelog and produces the re-emits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fraudstream.wire import BatchDecoder, Transaction
from streams.scoring import BatchOutcome, Outgoing, RawMessage, decode_batch

TABLE_NAME = "decided"


class DedupeConfig(BaseModel):
    """``dedupe`` settings: whether decisions are remembered, and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # How long after a decision a redelivery of its transaction is still recognised.
    # Memory is about (decisions per second) x retention_s x ~1 KiB per worker.
    retention_s: float = Field(default=3600.0, gt=0)


@dataclass(frozen=True, slots=True)
class Remembered:
    """A decision as the table keeps it: where it came from, when, and its bytes."""

    partition: int
    at_ms: int
    key: bytes | None
    decision: bytes

    def to_value(self) -> dict[str, Any]:
        """Plain JSON for the table's changelog (decisions are UTF-8 JSON already)."""
        return {
            "p": self.partition,
            "at": self.at_ms,
            "k": None if self.key is None else self.key.decode(),
            "d": self.decision.decode(),
        }

    @classmethod
    def from_value(cls, value: Any) -> Remembered | None:
        """The entry stored by :meth:`to_value`; None for anything else."""
        if not isinstance(value, dict):
            return None
        try:
            key = value["k"]
            return cls(
                partition=int(value["p"]),
                at_ms=int(value["at"]),
                key=None if key is None else str(key).encode(),
                decision=str(value["d"]).encode(),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def reemit(self) -> Outgoing:
        return Outgoing(self.key, self.decision)


@dataclass(frozen=True, slots=True)
class TableWrite:
    """One write-through to the table and its changelog: ``value`` None deletes."""

    partition: int
    key: str
    value: dict[str, Any] | None


@dataclass(slots=True)
class DedupeSplit:
    """A batch's valid transactions split into those to score and those already decided."""

    fresh: list[Transaction] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)  # the source partition of each fresh
    known: list[Outgoing] = field(default_factory=list)  # remembered decisions, to re-emit
    # A transaction repeated within the batch: the index in ``fresh`` of its first copy.
    repeats: list[int] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return len(self.known) + len(self.repeats)


@dataclass(slots=True)
class DedupePlan:
    """What the agent must do after scoring: store, forget, and re-emit."""

    writes: list[TableWrite] = field(default_factory=list)
    reemits: list[Outgoing] = field(default_factory=list)
    hits: int = 0
    expired: int = 0


def decode_by_partition(
    messages: Sequence[RawMessage], decoder: BatchDecoder[Transaction], now: datetime
) -> tuple[BatchOutcome, list[tuple[int, Transaction]]]:
    """:func:`streams.scoring.decode_batch` that keeps each valid transaction's source
    partition: the batch is decoded partition by partition (dead letters and their
    counts are merged into one outcome; the order within a partition is kept)."""
    by_partition: dict[int, list[RawMessage]] = {}
    for message in messages:
        by_partition.setdefault(message.partition, []).append(message)
    outcome = BatchOutcome()
    valid: list[tuple[int, Transaction]] = []
    for partition, group in by_partition.items():
        part, transactions = decode_batch(group, decoder, now)
        outcome.deadletters += part.deadletters
        outcome.rejected.update(part.rejected)
        valid += [(partition, t) for t in transactions]
    return outcome, valid


class Deduplicator:
    """Splits batches against the remembered decisions and plans the table writes.

    ``store`` (given to each call) is the table's current contents, transaction id ->
    :meth:`Remembered.to_value`. The expiry order of each partition is kept here and
    rebuilt from the store the first time a partition is seen after :meth:`reset` (call
    it after every table recovery: a rebalance may have moved partitions).
    """

    def __init__(self, config: DedupeConfig) -> None:
        self.config = config
        self._retention_ms = round(config.retention_s * 1000)
        self._order: dict[int, deque[tuple[int, str]]] = {}

    def reset(self) -> None:
        self._order.clear()

    def remembered(self) -> int:
        """Entries of the partitions this deduplicator currently tracks."""
        return sum(len(order) for order in self._order.values())

    def _ensure(self, partition: int, store: Mapping[str, Any]) -> deque[tuple[int, str]]:
        order = self._order.get(partition)
        if order is None:
            order = deque(sorted(_entries_of(partition, store.items())))
            self._order[partition] = order
        return order

    def split(
        self, batch: Sequence[tuple[int, Transaction]], store: Mapping[str, Any]
    ) -> DedupeSplit:
        out = DedupeSplit()
        first_at: dict[str, int] = {}
        for partition, transaction in batch:
            self._ensure(partition, store)
            tx_id = transaction.transaction_id
            if tx_id in first_at:
                out.repeats.append(first_at[tx_id])
                continue
            remembered = Remembered.from_value(store.get(tx_id))
            if remembered is not None:
                out.known.append(remembered.reemit())
                continue
            first_at[tx_id] = len(out.fresh)
            out.fresh.append(transaction)
            out.partitions.append(partition)
        return out

    def remember(
        self,
        split: DedupeSplit,
        decided: Sequence[Outgoing],
        now_ms: int,
        store: Mapping[str, Any],
    ) -> DedupePlan:
        """The writes that remember ``decided`` (one per fresh transaction, in order) and
        forget what is older than the retention, and the decisions to re-emit."""
        if len(decided) != len(split.fresh):
            raise ValueError(f"{len(decided)} decisions for {len(split.fresh)} fresh transactions")
        plan = DedupePlan(hits=split.hits)
        plan.reemits = [*split.known, *(decided[i] for i in split.repeats)]
        for transaction, partition, out in zip(split.fresh, split.partitions, decided, strict=True):
            entry = Remembered(partition, now_ms, out.key, out.value)
            plan.writes.append(TableWrite(partition, transaction.transaction_id, entry.to_value()))
            self._ensure(partition, store).append((now_ms, transaction.transaction_id))
        for partition in sorted(set(split.partitions)):
            plan.expired += self._expire(partition, now_ms, store, plan.writes)
        return plan

    def _expire(
        self, partition: int, now_ms: int, store: Mapping[str, Any], writes: list[TableWrite]
    ) -> int:
        order = self._ensure(partition, store)
        oldest_kept = now_ms - self._retention_ms
        expired = 0
        while order and order[0][0] < oldest_kept:
            _, tx_id = order.popleft()
            writes.append(TableWrite(partition, tx_id, None))
            expired += 1
        return expired


def _entries_of(partition: int, items: Iterable[tuple[Any, Any]]) -> list[tuple[int, str]]:
    out = []
    for key, value in items:
        remembered = Remembered.from_value(value)
        if remembered is not None and remembered.partition == partition:
            out.append((remembered.at_ms, str(key)))
    return out
