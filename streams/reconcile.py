"""The reconciliation agent: authorisations and settlements in, exceptions out.

One Faust agent (``concurrency=1``) consumes the authorizations and settlements topics
together. Both are keyed by card id with the same partition count as every engine topic,
so partition *p* of each carries the same cards and Faust's assignor gives both to the
same worker: the reconciler of partition *p* sees a payment's authorisation and all its
settlements. Values are raw bytes decoded in micro-batches by msgspec; bad messages go
to the dead-letter topic with the reason.

State lives in a changelog-backed Faust table keyed by transaction id (value: the
partition and the payment's state as plain JSON), plus one ``~meta:<p>`` entry per
partition (watermark and totals; ``~`` never occurs in an id). The pure
:class:`~fraudstream.reconcile.Reconciler` of each partition is rebuilt from the table
after every recovery (so it survives restarts and rebalances) and writes through to it:
every change of a batch goes to the changelog before the batch's offsets are
acknowledged (Faust flushes the producer before it commits), so a crash replays the
batch onto the state it had (repeats are recognised by id and change nothing).

The watermark is per partition and moves only with the events' own times: a partition
that receives nothing fires no deadlines until it does, and an input topic lagging the
other by more than ``orphan_grace_hours`` reports settlements without authorisation
that then match when the authorisations catch up. With the ``memory://`` store the state
is held twice (table and reconciler), bounded by ``retention_days`` of traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import faust

from fraudstream.reconcile import ReconcileConfig, Reconciler, Snapshot, Totals
from fraudstream.reconcile.state import snapshot_from_builtins, to_builtins
from fraudstream.settings import TopicSettings
from fraudstream.wire import Authorization, BatchDecoder, Settlement, encode
from fraudstream.wire.decode import dead_letter_record
from fraudstream.wire.schemas import RejectKind
from streams.scoring import Outgoing, RawMessage, raw_messages

TABLE_NAME = "reconcile-state"
_META = "~meta:"


def meta_key(partition: int) -> str:
    return f"{_META}{partition}"


@dataclass(frozen=True, slots=True)
class TableWrite:
    """One write-through to the table and its changelog: ``value`` None deletes."""

    partition: int
    key: str
    value: Any | None


@dataclass(slots=True)
class ReconcileOutcome:
    exceptions: list[Outgoing] = field(default_factory=list)
    deadletters: list[Outgoing] = field(default_factory=list)
    table_writes: list[TableWrite] = field(default_factory=list)
    rejected: Counter[RejectKind] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)  # exceptions by kind
    totals: dict[int, Totals] = field(default_factory=dict)  # of the partitions touched


class ReconcileHooks(Protocol):
    """Where the agent reports each batch; metrics implement it outside ``streams``."""

    def batch_reconciled(self, outcome: ReconcileOutcome, size: int, seconds: float) -> None: ...


class LatestTotals:
    """A hooks object that keeps the latest totals of every partition seen."""

    def __init__(self) -> None:
        self.by_partition: dict[int, Totals] = {}
        self.found: Counter[str] = Counter()
        self.rejected: Counter[RejectKind] = Counter()

    def batch_reconciled(self, outcome: ReconcileOutcome, size: int, seconds: float) -> None:
        self.by_partition.update(outcome.totals)
        self.found.update(outcome.found)
        self.rejected.update(outcome.rejected)

    def combined(self) -> Totals:
        out = Totals()
        counts: tuple[str, ...] = ("authorizations", "settlements", "redelivered", "matched")
        counts += ("opened", "closed", "open", "evicted")
        for t in self.by_partition.values():
            for name in counts:
                setattr(out, name, getattr(out, name) + getattr(t, name))
            for kind, count in t.exceptions.items():
                out.exceptions[kind] = out.exceptions.get(kind, 0) + count
        return out


def snapshot_for(partition: int, items: Iterable[tuple[Any, Any]]) -> Snapshot | None:
    """Partition ``partition``'s reconciler state from the table's (key, value) items."""
    meta: dict[str, Any] | None = None
    states: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(value, dict) or value.get("p") != partition:
            continue
        if key == meta_key(partition):
            meta = value
        elif isinstance(key, str) and not key.startswith(_META):
            states[key] = value["s"]
    if meta is None and not states:
        return None
    if meta is None:  # states without totals: count what is open now
        still_open = sum(s.get("status") == "open" for s in states.values())
        meta = {"watermark_ms": 0, "totals": {"open": still_open, "opened": still_open}}
    return snapshot_from_builtins(
        {
            "watermark_ms": meta["watermark_ms"],
            "totals": meta["totals"],
            "states": states,
            "authorizations_ms": meta.get("authorizations_ms", 0),
            "settlements_ms": meta.get("settlements_ms", 0),
        }
    )


class PartitionReconcilers:
    """One reconciler per partition, built lazily from the durable table."""

    def __init__(self, config: ReconcileConfig, load: Callable[[int], Snapshot | None]) -> None:
        self._config = config
        self._load = load
        self._by_partition: dict[int, Reconciler] = {}

    def get(self, partition: int) -> Reconciler:
        reconciler = self._by_partition.get(partition)
        if reconciler is None:
            reconciler = Reconciler(self._config, self._load(partition))
            self._by_partition[partition] = reconciler
        return reconciler

    def reset(self) -> None:
        """Forget the in-memory reconcilers (after a rebalance: rebuilt from the table)."""
        self._by_partition.clear()


@dataclass(frozen=True)
class Decoders:
    authorizations_topic: str
    authorizations: BatchDecoder[Authorization]
    settlements: BatchDecoder[Settlement]

    @classmethod
    def build(cls, names: TopicSettings, max_message_bytes: int) -> Decoders:
        return cls(
            names.authorizations,
            BatchDecoder(Authorization, max_bytes=max_message_bytes),
            BatchDecoder(Settlement, max_bytes=max_message_bytes),
        )


def _dead_letter(message: RawMessage, kind: RejectKind, reason: str, now: datetime) -> Outgoing:
    return Outgoing(*dead_letter_record(message, kind, reason, now))


def _decode(
    messages: Sequence[RawMessage], decoders: Decoders, now: datetime, out: ReconcileOutcome
) -> list[tuple[int, Authorization | Settlement]]:
    """The valid events with their positions in the batch, in the batch's order."""
    auth_at = [i for i, m in enumerate(messages) if m.topic == decoders.authorizations_topic]
    settle_at = [i for i, m in enumerate(messages) if m.topic != decoders.authorizations_topic]
    auths = decoders.authorizations.decode([messages[i].value for i in auth_at])
    settlements = decoders.settlements.decode([messages[i].value for i in settle_at])
    events: list[tuple[int, Authorization | Settlement]] = []
    events += [(auth_at[i], a) for i, a in zip(auths.indices, auths.items, strict=True)]
    events += [
        (settle_at[i], s) for i, s in zip(settlements.indices, settlements.items, strict=True)
    ]
    for positions, rejected_list in ((auth_at, auths.rejected), (settle_at, settlements.rejected)):
        for rejected in rejected_list:
            source = messages[positions[rejected.index]]
            out.deadletters.append(_dead_letter(source, rejected.kind, rejected.reason, now))
            out.rejected[rejected.kind] += 1
    events.sort(key=lambda pair: pair[0])
    return events


def reconcile_batch(
    messages: Sequence[RawMessage],
    decoders: Decoders,
    reconcilers: PartitionReconcilers,
    now: datetime,
) -> ReconcileOutcome:
    """Decode, reconcile per partition, and return what to produce and to store."""
    out = ReconcileOutcome()
    touched: dict[int, Reconciler] = {}
    for index, event in _decode(messages, decoders, now, out):
        partition = messages[index].partition
        reconciler = touched.get(partition) or reconcilers.get(partition)
        touched[partition] = reconciler
        if isinstance(event, Authorization):
            found = reconciler.on_authorization(event)
        else:
            found = reconciler.on_settlement(event)
        for exc in found:
            out.exceptions.append(Outgoing(exc.card_id.encode(), encode(exc)))
            out.found[exc.kind] += 1
    for partition, reconciler in sorted(touched.items()):
        changes = reconciler.take_changes()
        out.table_writes += [
            TableWrite(partition, key, {"p": partition, "s": state})
            for key, state in changes.upserts.items()
        ]
        out.table_writes += [TableWrite(partition, key, None) for key in changes.deletes]
        meta = {
            "p": partition,
            "watermark_ms": reconciler.watermark_ms,
            "authorizations_ms": reconciler.input_times[0],
            "settlements_ms": reconciler.input_times[1],
            "totals": to_builtins(reconciler.totals),
        }
        out.table_writes.append(TableWrite(partition, meta_key(partition), meta))
        out.totals[partition] = reconciler.totals
    return out


# --- the Faust edge ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileAgent:
    agent: Any
    table: Any
    reconcilers: PartitionReconcilers


def register_reconcile_agent(
    app: faust.App,
    names: TopicSettings,
    config: ReconcileConfig,
    hooks: ReconcileHooks,
    *,
    partitions: int,
    max_batch: int,
    batch_window_s: float,
    max_message_bytes: int,
) -> ReconcileAgent:
    def raw_topic(*topic_names: str) -> Any:
        return app.topic(
            *topic_names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )

    source = raw_topic(names.authorizations, names.settlements)
    exceptions_topic = raw_topic(names.reconciliation_exceptions)
    deadletter = raw_topic(names.deadletter)
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="reconciliation state per transaction id, and per-partition watermark/totals",
    )
    store = table.data
    reconcilers = PartitionReconcilers(config, lambda p: snapshot_for(p, list(store.items())))
    decoders = Decoders.build(names, max_message_bytes)

    @table.on_recover
    async def _rebuild() -> None:
        reconcilers.reset()

    async def reconcile(stream: Any) -> None:
        async for events in stream.take_events(max_batch, within=batch_window_s):
            started = time.perf_counter()
            messages = raw_messages(events)
            outcome = reconcile_batch(messages, decoders, reconcilers, datetime.now(UTC))
            for write in outcome.table_writes:
                if write.value is None:
                    store.pop(write.key, None)
                else:
                    store[write.key] = write.value
                if write.value is None:
                    # A real tombstone (the JSON serializer would write `null`, which
                    # compaction keeps and recovery would bring back as a value).
                    table.send_changelog(write.partition, write.key, None, value_serializer="raw")
                else:
                    table.send_changelog(write.partition, write.key, write.value)
            pending = [await deadletter.send(key=o.key, value=o.value) for o in outcome.deadletters]
            pending += [
                await exceptions_topic.send(key=o.key, value=o.value) for o in outcome.exceptions
            ]
            # Broker acknowledgement of every output before take_events acks the inputs.
            await asyncio.gather(*pending)
            hooks.batch_reconciled(outcome, len(messages), time.perf_counter() - started)

    agent = app.agent(source, name="reconcile", concurrency=1)(reconcile)
    return ReconcileAgent(agent=agent, table=table, reconcilers=reconcilers)
