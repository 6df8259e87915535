"""``fraudstream replay``: produce transactions to the transactions topic at a target rate.

Sources: a simulator output (``fraudstream simulate --out x.parquet|x.jsonl``), the
handbook's Parquet file (its columns are mapped onto the wire schema: ``C<customer>``
cards, ``T<terminal>`` terminals, EUR), or a fresh simulation (``--simulate``). Every
message is keyed by card id, as the engine expects.

Pacing is open-loop: message *i* is due at ``start + i / rate`` whatever the broker
does, so a slow consumer shows up as latency, not as a politely slower producer
(closed-loop load generators hide queueing). ``--live`` rewrites each event time to
the moment it is produced, which makes "event time to decision" a latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from fraudstream.settings import KafkaSettings

Message = tuple[bytes | None, bytes]
_HANDBOOK_COLUMNS = {"TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"}
_KEY_ONLY = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class ReplayStats:
    sent: int
    seconds: float
    target_rate: float | None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def messages_from_frame(frame: Any) -> list[Message]:
    """Wire messages (key = card id) of a simulator transactions frame (pandas)."""
    from fraudstream.simulator import to_json_lines

    keys = [str(card).encode() for card in frame["card_id"]]
    return list(zip(keys, to_json_lines(frame), strict=True))


def handbook_messages(path: Path, limit: int | None = None) -> list[Message]:
    """The handbook's transactions in the wire format, in time order."""
    import pandas as pd

    raw = pd.read_parquet(path, columns=sorted(_HANDBOOK_COLUMNS))
    raw = raw.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    if limit is not None:
        raw = raw.head(limit)
    frame = pd.DataFrame(
        {
            "transaction_id": raw["TRANSACTION_ID"].map(lambda i: f"{i:010d}"),
            "event_time": pd.to_datetime(raw["TX_DATETIME"]).dt.tz_localize("UTC"),
            "card_id": "C" + raw["CUSTOMER_ID"].astype(str),
            "terminal_id": "T" + raw["TERMINAL_ID"].astype(str),
            "amount": raw["TX_AMOUNT"].astype(float),
            "currency": "EUR",
        }
    )
    return messages_from_frame(frame)


def load_messages(path: Path, limit: int | None = None) -> list[Message]:
    """Messages from a ``.jsonl`` (one wire message per line) or ``.parquet`` file."""
    if path.suffix == ".jsonl":
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        lines = lines[:limit] if limit is not None else lines
        return [(_card_key(line), line) for line in lines]
    if path.suffix != ".parquet":
        raise ValueError(f"{path}: expected a .parquet or .jsonl file")
    import pyarrow.parquet as pq

    columns = set(pq.read_schema(path).names)
    if columns >= _HANDBOOK_COLUMNS:
        return handbook_messages(path, limit)
    import pandas as pd

    frame = pd.read_parquet(path)
    return messages_from_frame(frame.head(limit) if limit is not None else frame)


def _card_key(line: bytes) -> bytes | None:
    try:
        card = _KEY_ONLY.decode(line).get("card_id")
    except msgspec.DecodeError:
        return None  # produced anyway: the engine dead-letters it with the reason
    return str(card).encode() if card is not None else None


def with_event_time(value: bytes, when: datetime) -> bytes:
    """``value`` with its ``event_time`` set to ``when`` (unparseable values unchanged,
    so a deliberately bad message stays bad)."""
    try:
        doc = _KEY_ONLY.decode(value)
    except msgspec.DecodeError:
        return value
    doc["event_time"] = when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return _encode(doc)


class Pacer:
    """Open-loop schedule: message ``i`` is due ``i / rate`` seconds after the start."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.perf_counter):
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._clock = clock
        self.start = clock()

    def wait_s(self, index: int) -> float:
        """How long to wait before message ``index`` is due (0 when due or no rate)."""
        if self.rate is None:
            return 0.0
        return max(0.0, self.start + index / self.rate - self._clock())


async def produce(
    kafka: KafkaSettings,
    topic: str,
    messages: Sequence[Message],
    *,
    rate: float | None = None,
    live: bool = False,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 200,
    ingress: Callable[[bytes], bytes] | None = None,
) -> ReplayStats:
    """Send ``messages`` to ``topic`` at ``rate`` per second (as fast as possible when
    None) and wait until the broker has acknowledged them all. ``ingress`` is applied to
    each value first (``fraudstream.wire.pan.CardNumberIngress``: the producer side of
    the card-number rule, so no topic ever holds one in clear)."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka_config import aiokafka_kwargs

    producer = AIOKafkaProducer(
        acks="all", linger_ms=5, max_batch_size=256 * 1024, **aiokafka_kwargs(kafka)
    )
    await producer.start()
    try:
        pacer = Pacer(rate)
        if rate is not None:
            chunk = max(1, min(chunk, int(rate / 500)))  # a burst every ~2 ms at most
        pending: list[asyncio.Future[Any]] = []
        for start in range(0, len(messages), chunk):
            wait = pacer.wait_s(start)
            if wait > 0:
                await asyncio.sleep(wait)
            now = datetime.now(UTC)
            for key, value in messages[start : start + chunk]:
                out = with_event_time(value, now) if live else value
                if ingress is not None:
                    out = ingress(out)
                pending.append(await producer.send(topic, out, key=key))
            if on_progress is not None:
                on_progress(min(start + chunk, len(messages)))
            if len(pending) >= 20 * chunk:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
        return ReplayStats(len(messages), time.perf_counter() - pacer.start, rate)
    finally:
        await producer.stop()
