"""Micro-batches that keep filling while the previous batch is decided and delivered.

Faust's ``Stream.take_events`` fills its buffer only between batches: while the agent's
body runs, its buffering processor is held back, and the batch's events are
acknowledged when the body returns. Reading, deciding and waiting for the broker's
acknowledgements therefore take turns, and at full load the 5 ms window closed batches
of ~90 transactions (what Faust moves into the buffer in 5 ms), each decided while
nothing was read.

:class:`EventBatcher` reads a manually acknowledged stream (``stream.noack().events()``)
in a task of its own into a bounded buffer, so the next batch fills while the decision
thread works on the current one, and acknowledges nothing itself: the scoring agent
acknowledges a batch's events once every output of it is acknowledged by the broker
(at-least-once, as before), while the next batch is already being decided.

A batch closes when ``max_batch`` events are buffered, or ``within_s`` after its oldest
event arrived: an event that already waited through the previous batch is not held back
another window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

E = TypeVar("E")


class EventBatcher(Generic[E]):
    """Use as ``async with EventBatcher(events, ...) as batches: ... await
    batches.next()``; the reading task runs inside the block."""

    def __init__(
        self,
        events: AsyncIterator[E],
        max_batch: int,
        within_s: float,
        *,
        capacity: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``capacity``: events buffered before reading pauses (default two batches;
        past it the stream's own queue and Faust's flow control hold the rest)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self.within_s = within_s
        self._capacity = max(capacity or 2 * max_batch, max_batch)
        self._events = events
        self._clock = clock
        self._buffer: deque[tuple[float, E]] = deque()
        # Set when the buffer stops being empty / holds a whole batch, and at the end:
        # the consumer wakes once per batch, not once per event.
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._ended = False
        self._error: BaseException | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventBatcher[E]:
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self) -> None:
        buffer, room, clock = self._buffer, self._room, self._clock
        max_batch, capacity = self.max_batch, self._capacity
        try:
            async for event in self._events:
                buffer.append((clock(), event))
                held = len(buffer)
                if held == 1:
                    self._arrived.set()
                if held >= max_batch:
                    self._full.set()
                if held >= capacity:
                    room.clear()
                    await room.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which crashes the agent
            self._error = exc
        finally:
            self._ended = True
            self._arrived.set()
            self._full.set()

    async def next(self) -> list[E]:
        """The next batch, in arrival order. Raises what reading the stream raised, and
        :class:`StopAsyncIteration` once the stream has ended and everything read was
        handed out."""
        buffer = self._buffer
        while True:
            if len(buffer) >= self.max_batch:
                return self._take()
            if self._ended:
                if buffer:
                    return self._take()
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if not buffer:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            left = buffer[0][0] + self.within_s - self._clock()
            if left <= 0:
                return self._take()
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), left)
            except TimeoutError:
                return self._take()

    def take_all(self) -> list[E]:
        """Everything buffered and not handed out yet (for the caller to let go of when
        it stops on an error)."""
        held = [event for _, event in self._buffer]
        self._buffer.clear()
        self._room.set()
        return held

    def _take(self) -> list[E]:
        buffer = self._buffer
        batch = [buffer.popleft()[1] for _ in range(min(self.max_batch, len(buffer)))]
        self._room.set()
        return batch
