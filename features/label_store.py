"""The label store training reads: every chargeback and investigator verdict the worker
applied, appended as it arrives.

Files are JSON lines (one :class:`LabelEvent` per line, the wire format), one per UTC
day of the label time and per writer (``<day>/<writer>.jsonl``), so two workers never
interleave writes in one file and a day's labels can be archived or dropped whole.
Writes are appended and flushed before ``append`` returns; the worker calls it before
the labels' offsets are acknowledged, so a crash can repeat labels but never lose them.
:func:`read_label_store` therefore de-duplicates (same transaction, label time and
verdict) and returns the canonical label table (:data:`features.table.LABEL_SCHEMA`)
that :func:`features.offline.build_features` and training take.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import msgspec
import polars as pl

from features.table import epoch_ms, label_frame
from fraudstream.wire.schemas import LabelEvent

_DAY_MS = 86_400_000
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LabelEvent)
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def default_writer_id() -> str:
    return _SAFE.sub("_", f"{socket.gethostname()}-{os.getpid()}")


class LabelStore:
    def __init__(self, directory: Path, writer_id: str | None = None) -> None:
        self.directory = Path(directory)
        self.writer_id = _SAFE.sub("_", writer_id) if writer_id else default_writer_id()
        self._lock = threading.Lock()

    def append(self, labels: Sequence[LabelEvent]) -> int:
        """Append ``labels``; how many were written."""
        by_day: dict[int, list[bytes]] = {}
        for label in labels:
            day = epoch_ms(label.label_time) // _DAY_MS
            by_day.setdefault(day, []).append(_encoder.encode(label) + b"\n")
        with self._lock:
            for day, lines in by_day.items():
                folder = self.directory / f"day={day}"
                folder.mkdir(parents=True, exist_ok=True)
                with (folder / f"{self.writer_id}.jsonl").open("ab") as out:
                    out.write(b"".join(lines))
                    out.flush()
                    os.fsync(out.fileno())
        return len(labels)


def read_label_store(directory: Path) -> pl.DataFrame:
    """Every label in the store, de-duplicated, as the canonical label table."""
    rows: dict[tuple[str, int, bool], LabelEvent] = {}
    for path in sorted(Path(directory).glob("day=*/*.jsonl")):
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                label = _decoder.decode(line)
            except msgspec.DecodeError:
                continue  # a line cut short by a crash mid-write: the label comes again
            rows[(label.transaction_id, epoch_ms(label.label_time), label.is_fraud)] = label
    # By label time; ties keep the order they were written in (the later verdict last).
    ordered = sorted(rows.values(), key=lambda x: epoch_ms(x.label_time))
    return label_frame(ordered)
