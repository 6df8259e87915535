"""A Faust consumer that never commits past a message it did not process.

Faust decides what to commit per partition from the offsets its streams acknowledged
(``Consumer._new_offset``), and three of its rules can commit a message that was never
processed:

* its committed offset is the *next* offset to read (what it commits, and what it sets
  after seeking to the committed position on an assignment), yet the check that
  refuses a gap at the head of the acknowledged offsets lets exactly one missing offset
  through (acknowledged offsets starting at committed + 1 are committed as if the
  message at ``committed`` had been processed);
* its fetch loop reads any jump in the offsets it receives as records that do not exist
  (compaction, transaction markers) and counts them as processed (``_add_gap``);
* its streams acknowledge the messages they *skip* around a rebalance (fetched in an
  older consumer generation, or read while the flow is suspended), "so that the lag
  does not grow": a partition that stays with the worker then commits past them.

Around a rebalance its fetch loop does skip records: records fetched for a partition
before its seek to the committed position move the read position past the first
records, which are then dropped as already read, and it skips what it fetched in the
generation before. With the rules above, those messages are committed and lost
silently (``tests/streams/test_fault_workers.py`` lost one transaction per moved
partition when a worker joined and left, and 63 in blocks when workers were killed).

This consumer counts an acknowledgement only for a message of the current generation
acknowledged while the flow runs (one processed during a rebalance is simply read again
by whoever owns its partition next), never takes a jump for records that do not exist,
and refuses to commit past a hole: it seeks the partition back to the first missing
offset and reads it again (the messages after it come again too; the dedupe table
re-emits their decisions: at-least-once, never a second decision). A hole still there
after :data:`CONFIRM_REWINDS` completed reads and :data:`CONFIRM_GRACE_S` after the last
is real (an upstream's transaction markers: each costs its partition's commits about a
minute) and is committed past, with a warning.

Only these checks and the seek are ours; everything else is Faust's consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

log = logging.getLogger(__name__)

# A read of a hole is repeated if it is still missing this long after the last read
# completed (the fetch loop can lose records again while a rebalance settles, and what
# was read waits behind the stream's buffer before it is processed).
RETRY_REWIND_S = 10.0
# Completed reads of the same hole, and the time after the last one, after which its
# offsets are taken for records that do not exist (the stream's buffer of ~4,000
# messages is processed well within it).
CONFIRM_REWINDS = 3
CONFIRM_GRACE_S = 30.0
# How long a paused partition's already-fetched records are given to drain (the fetch
# loop asks for records every second) before the seek back.
SETTLE_STEP_S = 1.2
SETTLE_MAX_S = 6.0


@dataclass
class _Hole:
    start: int  # first missing offset (the committed position)
    end: int  # first offset processed after it
    reads: int = 0  # reads of it completed (seek done)
    last_read_s: float = 0.0  # when the last one completed
    reading: bool = False  # a read is under way


class CommitGuardConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with a head-of-partition gap check that holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holes: dict[Any, _Hole] = {}
        self._rewind_tasks: set[asyncio.Future[Any]] = set()
        self._rewinding = asyncio.Lock()
        self._first_offsets: dict[Any, int] = {}  # where a partition without commits starts
        self._looking_up: set[Any] = set()
        self.rewinds_total = 0
        self.uncounted_acks = 0

    def ack(self, message: Any) -> bool:
        """Faust's acknowledgement, except for messages that may not have been processed
        (see the module): those are marked done for Faust's bookkeeping (its wait for
        in-flight messages during a rebalance ends) but never committed."""
        app = self.app
        if message.generation_id == app.consumer_generation_id and app.flow_control.is_active():
            return bool(super().ack(message))
        if self.release(message):
            self.uncounted_acks += 1
        return False

    def release(self, message: Any) -> bool:
        """Mark ``message`` done for Faust's bookkeeping without counting it as
        processed: it is not committed, and the hole it leaves is read again. For what an
        agent held when it failed: Faust waits for every message read to be acknowledged
        before a rebalance and before stopping, and without this waited forever (a
        worker whose agent had crashed could neither take part in a rebalance nor stop).
        Whether it was still outstanding."""
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
            if self._waiting_for_ack is not None:
                notify(self._waiting_for_ack)
        return True

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Not taken on trust: a hole is read again before it counts (see the module)."""
        return None

    def _new_offset(self, tp: Any) -> int | None:
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if committed is None and acked:
            # Nothing committed yet (a new group): the partition was read from its
            # first offset, which must then be the first processed, like any other.
            committed = self._first_offsets.get(ensure_TP(tp))
            if committed is None:
                self._look_up_first_offset(tp)
                return None
        if committed is not None and acked:
            first = min(acked)
            if first > committed:
                if not self._confirmed(tp, committed, first):
                    return None
                # Records that do not exist: count them as done, as Faust's gaps would.
                acked.extend(range(committed, first))
                acked.sort()
        result: int | None = super()._new_offset(tp)
        return result

    def _look_up_first_offset(self, tp: Any) -> None:
        tp = ensure_TP(tp)
        if tp in self._looking_up:
            return
        self._looking_up.add(tp)

        async def look_up() -> None:
            try:
                first = await self.earliest_offsets(tp)
                self._first_offsets[tp] = first[tp]
            except Exception as exc:  # asked again at the next commit
                log.warning("%s: first offset not known yet (%s)", tp, exc)
            finally:
                self._looking_up.discard(tp)

        task = asyncio.ensure_future(look_up())
        self._rewind_tasks.add(task)
        task.add_done_callback(self._rewind_tasks.discard)

    def _confirmed(self, tp: Any, start: int, end: int) -> bool:
        """Whether the hole [start, end) survived enough completed reads, and time after
        the last for what it read to be processed, to be real; if not, and no read of it
        is under way, start one."""
        now = time.monotonic()
        hole = self._holes.get(tp)
        if hole is None or (hole.start, hole.end) != (start, end):
            hole = self._holes[tp] = _Hole(start, end)
        if hole.reading:
            return False
        since = now - hole.last_read_s
        if hole.reads >= CONFIRM_REWINDS and since >= CONFIRM_GRACE_S:
            log.warning(
                "%s: offsets %d..%d are still missing after %d reads; taking them for "
                "records that do not exist (transaction markers?) and committing past them",
                tp,
                start,
                end - 1,
                hole.reads,
            )
            del self._holes[tp]
            return True
        if hole.reads < CONFIRM_REWINDS and (hole.reads == 0 or since >= RETRY_REWIND_S):
            hole.reading = True
            self.rewinds_total += 1
            log.warning(
                "%s: offsets %d..%d were never processed but later ones were; not "
                "committing past them and reading the partition again from %d",
                tp,
                start,
                end - 1,
                start,
            )
            task = asyncio.ensure_future(self._read_again(tp, hole))
            self._rewind_tasks.add(task)
            task.add_done_callback(self._rewind_tasks.discard)
        return False

    async def _read_again(self, tp: Any, hole: _Hole) -> None:
        try:
            await self._seek_back(tp, hole.start)
        finally:
            hole.reads += 1
            hole.last_read_s = time.monotonic()
            hole.reading = False

    async def _seek_back(self, tp: Any, offset: int) -> None:
        """Read ``tp`` again from ``offset``. The partition is paused first and its
        fetched records are let through: one delivered after the seek would move the
        read position past the records read again, and they would be dropped again."""
        tp = ensure_TP(tp)  # the acknowledged offsets may be keyed by aiokafka's type
        async with self._rewinding:
            self.pause_partitions([tp])
            try:
                await self._settle(tp)
                await self.seek(tp, offset)
            except Exception as exc:  # e.g. revoked meanwhile: the new owner reads it
                log.warning("%s: seek back to %d failed (%s)", tp, offset, exc)
            finally:
                if tp in self.assignment():
                    self.resume_partitions([tp])

    async def _settle(self, tp: Any) -> None:
        """Until the read position of ``tp`` stops moving (at most SETTLE_MAX_S)."""
        last = self._read_offset.get(tp)
        deadline = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_STEP_S)
            now = self._read_offset.get(tp)
            if now == last:
                return
            last = now


class CommitGuardTransport(aiokafka_driver.Transport):
    Consumer = CommitGuardConsumer
