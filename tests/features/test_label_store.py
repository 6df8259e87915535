"""The label store: appended by the worker, read by training, nothing lost or doubled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from features.label_store import LabelStore, read_label_store
from features.offline import build_features
from features.table import HISTORY_SCHEMA, LABEL_SCHEMA, epoch_ms
from fraudstream.wire.schemas import SCHEMA_VERSION, LabelEvent

T0 = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)


def label(i: int, *, fraud: bool = True, after: timedelta = timedelta(hours=1)) -> LabelEvent:
    return LabelEvent(
        schema_version=SCHEMA_VERSION,
        transaction_id=f"tx{i}",
        card_id=f"c{i % 3}",
        terminal_id=f"T{i % 2}",
        event_time=T0 + timedelta(minutes=i),
        label_time=T0 + timedelta(minutes=i) + after,
        is_fraud=fraud,
        source="chargeback",
        mcc="5411",
    )


def test_appended_labels_read_back_once_across_days_and_writers(tmp_path: Path) -> None:
    first, second = LabelStore(tmp_path, "worker-a"), LabelStore(tmp_path, "worker-b")
    early = [label(i) for i in range(3)]
    late = [label(i, after=timedelta(hours=5)) for i in range(3, 6)]  # next UTC day
    first.append(early + late)
    second.append(early[:2])  # redelivered after a crash: written twice
    second.append([label(1, fraud=False, after=timedelta(hours=2))])  # a later verdict
    (tmp_path / "day=0").mkdir()
    (tmp_path / "day=0" / "worker-c.jsonl").write_bytes(b'{"schema_version": 1, "transac')

    table = read_label_store(tmp_path)
    assert table.schema == pl.Schema(LABEL_SCHEMA)
    day = epoch_ms(T0) // 86_400_000
    assert {p.name for p in tmp_path.glob("day=*")} == {"day=0", f"day={day}", f"day={day + 1}"}
    assert table.height == 7  # 6 labels + the later verdict; duplicates dropped
    assert table["label_time_ms"].is_sorted()
    tx1 = table.filter(pl.col("transaction_id") == "tx1")
    assert tx1["is_fraud"].to_list() == [1, 0]


def test_training_takes_the_store_as_its_label_table(tmp_path: Path) -> None:
    LabelStore(tmp_path).append([label(i) for i in range(4)])
    history = pl.DataFrame(
        {
            "transaction_id": [f"tx{i}" for i in range(4)],
            "event_time_ms": [epoch_ms(T0 + timedelta(minutes=i)) for i in range(4)],
            "card_id": [f"c{i % 3}" for i in range(4)],
            "terminal_id": [f"T{i % 2}" for i in range(4)],
            "amount": [10.0, 20.0, 30.0, 40.0],
        }
    ).with_columns(
        [
            pl.lit(None, dtype=d).alias(c)
            for c, d in HISTORY_SCHEMA.items()
            if c not in ("transaction_id", "event_time_ms", "card_id", "terminal_id", "amount")
        ]
    )
    features = build_features(history, read_label_store(tmp_path))
    assert features.height == 4
