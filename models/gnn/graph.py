"""The transaction graph: entities as nodes, transactions as edges, seen as of a time.

``GraphState`` keeps the raw edges (one row per transaction) and the labels as they
arrive. ``snapshot(as_of)`` turns them into what the encoder reads: per entity type,
the ids, a feature row per entity summarising its history, and the card↔entity edges.

Time discipline, the part that matters: a snapshot at ``as_of`` uses only transactions
strictly before ``as_of`` and only labels *known* by then (``label_known_at <= as_of``).
Training scores the transactions after a snapshot with that snapshot, exactly as the
online engine scores with embeddings computed at the last refresh, so no label the
engine could not yet have seen leaks into training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from fraudstream.wire.schemas import Transaction

# Transaction field -> node type. The card is the hub every other entity links to.
ENTITY_TYPES: Mapping[str, str] = {
    "card_id": "card",
    "terminal_id": "terminal",
    "merchant_id": "merchant",
    "device_id": "device",
    "ip": "ip",
}
HUB_COLUMN = "card_id"

NODE_FEATURES: tuple[str, ...] = (
    "log_tx",
    "log_tx_1d",
    "log_tx_7d",
    "mean_log_amount",
    "std_log_amount",
    "log_labelled",
    "known_fraud_rate",
    "log_known_fraud",
    "log_days_since_last",
    "log_degree",
)

EdgeType = tuple[str, str, str]


def edge_types(node_types: Sequence[str]) -> list[EdgeType]:
    """Card -> entity and entity -> card for every non-card type present."""
    hub = ENTITY_TYPES[HUB_COLUMN]
    out: list[EdgeType] = []
    for node_type in node_types:
        if node_type != hub:
            out += [(hub, "uses", node_type), (node_type, "used_by", hub)]
    return out


@dataclass(frozen=True)
class NodeSet:
    """Entities of one type. ``x`` has one extra, last row: the cold-start entity."""

    ids: npt.NDArray[np.str_]
    x: npt.NDArray[np.float32]

    @property
    def cold(self) -> int:
        return len(self.ids)

    def rows(self, values: Iterable[object]) -> npt.NDArray[np.int64]:
        """Row of each id; unseen and missing ids map to the cold row."""
        index = pd.Index(self.ids).get_indexer(pd.Index(list(values), dtype=object))
        return np.where(index < 0, self.cold, index).astype(np.int64)


@dataclass(frozen=True)
class GraphSnapshot:
    as_of: datetime
    nodes: dict[str, NodeSet]
    edges: dict[EdgeType, npt.NDArray[np.int64]]


class GraphState:
    """Edges appended as transactions arrive, labels recorded as they become known.

    Offline it is filled from a table; online a job appends decoded transactions and
    label events, and the scorer is refreshed from ``snapshot(now)`` on a schedule.
    """

    def __init__(
        self,
        entity_columns: Sequence[str] = tuple(ENTITY_TYPES),
        history: timedelta = timedelta(days=30),
    ) -> None:
        if HUB_COLUMN not in entity_columns:
            raise ValueError(f"the graph needs {HUB_COLUMN!r} as its hub")
        self.entity_columns = tuple(entity_columns)
        self.history = history
        self._chunks: list[pd.DataFrame] = []
        self._edges = _empty_edges(self.entity_columns)

    def __len__(self) -> int:
        return len(self._consolidated())

    @property
    def node_types(self) -> list[str]:
        return [ENTITY_TYPES[c] for c in self.entity_columns]

    def append_frame(
        self, transactions: pd.DataFrame, label_delay: timedelta | None = None
    ) -> None:
        """Add transactions from a table (event_time, amount, entity columns).

        Labels come from an ``is_fraud`` column, known from ``label_known_at`` when the
        table has that column (NaT: never known), else ``label_delay`` after each
        transaction (the handbook's protocol), else not at all.
        """
        frame = normalise_transactions(transactions, self.entity_columns)
        columns = transactions.columns
        if "is_fraud" in columns and ("label_known_at" in columns or label_delay is not None):
            labels = pd.to_numeric(transactions["is_fraud"], errors="coerce")
            frame["is_fraud"] = labels.to_numpy(np.float64)
            if "label_known_at" in columns:
                frame["label_known_at"] = _utc(transactions["label_known_at"]).to_numpy()
            else:
                frame["label_known_at"] = frame["event_time"] + pd.Timedelta(label_delay)
        self._chunks.append(frame)

    def append_transactions(self, transactions: Sequence[Transaction]) -> None:
        """Add decoded wire transactions (the online path); their labels come later."""
        rows = {
            "transaction_id": [t.transaction_id for t in transactions],
            "event_time": [t.event_time for t in transactions],
            "amount": [t.amount for t in transactions],
        }
        for column in self.entity_columns:
            rows[column] = [getattr(t, column) for t in transactions]
        self.append_frame(pd.DataFrame(rows))

    def record_labels(
        self,
        transaction_ids: Sequence[str],
        is_fraud: Sequence[int],
        known_at: datetime | Sequence[datetime],
    ) -> None:
        """Labels for earlier transactions, each known from its ``known_at`` on.

        Labels for transactions the state does not hold (pruned, or never seen) are
        dropped: they can no longer shape any snapshot.
        """
        edges = self._consolidated()
        ids = pd.Index([str(i) for i in transaction_ids])
        present = ids.isin(edges.index)
        if isinstance(known_at, datetime):
            times = pd.Series(utc_timestamp(known_at), index=range(len(ids)))
        else:
            times = _utc(pd.Series(list(known_at)))
        edges.loc[ids[present], "is_fraud"] = np.asarray(is_fraud, np.float64)[present]
        edges.loc[ids[present], "label_known_at"] = times.to_numpy()[present]

    def prune(self, before: datetime) -> None:
        """Forget transactions older than ``before``; they no longer shape any snapshot."""
        edges = self._consolidated()
        self._edges = edges[edges["event_time"] >= utc_timestamp(before)]

    def copy(self) -> GraphState:
        """An independent state with the same edges and labels (for a refresh that runs
        while new transactions keep arriving)."""
        twin = GraphState(self.entity_columns, self.history)
        twin._edges = self._consolidated().copy()
        return twin

    def write_parquet(self, path: Path) -> None:
        """The edges and their labels, for a refresh in another process."""
        self._consolidated().to_parquet(path)

    @classmethod
    def read_parquet(
        cls, path: Path, entity_columns: Sequence[str], history: timedelta
    ) -> GraphState:
        """The state :meth:`write_parquet` wrote."""
        state = cls(entity_columns, history)
        state._edges = pd.read_parquet(path)
        return state

    def snapshot(self, as_of: datetime) -> GraphSnapshot:
        return build_snapshot(self._consolidated(), as_of, self.entity_columns, self.history)

    def _consolidated(self) -> pd.DataFrame:
        if self._chunks:
            frames = [self._edges, *self._chunks] if len(self._edges) else self._chunks
            merged = pd.concat(frames)
            self._edges = merged[~merged.index.duplicated(keep="last")]
            self._chunks = []
        return self._edges


def normalise_transactions(frame: pd.DataFrame, entity_columns: Sequence[str]) -> pd.DataFrame:
    """Ids as strings (None where absent), times in UTC, indexed by transaction id."""
    out = pd.DataFrame(index=frame.index)
    out["event_time"] = _utc(frame["event_time"])
    out["amount"] = pd.to_numeric(frame["amount"], errors="coerce").astype(np.float64)
    for column in entity_columns:
        if column in frame.columns:
            values = frame[column]
            out[column] = (
                values.astype(object)
                .where(values.notna(), None)
                .map(lambda v: None if v is None else str(v))
            )
        else:
            out[column] = None
    out["is_fraud"] = np.nan
    out["label_known_at"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
    if "transaction_id" in frame.columns:
        out.index = pd.Index(frame["transaction_id"].astype(str), name="transaction_id")
    else:
        out.index = pd.Index(
            [f"row-{i}" for i in range(len(frame))], name="transaction_id", dtype=object
        )
    return out


def build_snapshot(
    edges: pd.DataFrame,
    as_of: datetime,
    entity_columns: Sequence[str],
    history: timedelta,
) -> GraphSnapshot:
    cutoff = utc_timestamp(as_of)
    times = edges["event_time"]
    window = edges[(times < cutoff) & (times >= cutoff - pd.Timedelta(history))]
    age_days = ((cutoff - window["event_time"]) / pd.Timedelta(days=1)).to_numpy(np.float64)
    known = (window["label_known_at"] <= cutoff).to_numpy(bool)
    fraud = window["is_fraud"].to_numpy(np.float64)
    log_amount = np.log1p(np.clip(window["amount"].to_numpy(np.float64), 0, None))
    stats = pd.DataFrame(
        {
            "one": 1.0,
            "in_1d": (age_days <= 1.0).astype(np.float64),
            "in_7d": (age_days <= 7.0).astype(np.float64),
            "la": np.nan_to_num(log_amount),
            "la2": np.nan_to_num(log_amount) ** 2,
            "labelled": known.astype(np.float64),
            "fraud": (known & (fraud == 1.0)).astype(np.float64),
            "age": age_days,
        },
        index=window.index,
    )
    hub_ids = _ids(window[HUB_COLUMN])
    nodes: dict[str, NodeSet] = {}
    edge_index: dict[EdgeType, npt.NDArray[np.int64]] = {}
    degree: dict[str, npt.NDArray[np.float64]] = {}
    ids_by_type: dict[str, npt.NDArray[np.str_]] = {}
    for column in entity_columns:
        ids_by_type[ENTITY_TYPES[column]] = (
            hub_ids if column == HUB_COLUMN else _ids(window[column])
        )
    hub = ENTITY_TYPES[HUB_COLUMN]
    degree[hub] = np.zeros(len(hub_ids))
    for column in entity_columns:
        node_type = ENTITY_TYPES[column]
        if column == HUB_COLUMN:
            continue
        pairs = window[[HUB_COLUMN, column]].dropna().drop_duplicates()
        src = pd.Index(hub_ids).get_indexer(pairs[HUB_COLUMN])
        dst = pd.Index(ids_by_type[node_type]).get_indexer(pairs[column])
        edge_index[(hub, "uses", node_type)] = np.stack([src, dst]).astype(np.int64)
        edge_index[(node_type, "used_by", hub)] = np.stack([dst, src]).astype(np.int64)
        degree[hub] += np.bincount(src, minlength=len(hub_ids))
        degree[node_type] = np.bincount(dst, minlength=len(ids_by_type[node_type])).astype(
            np.float64
        )
    history_days = history / timedelta(days=1)
    for column in entity_columns:
        node_type = ENTITY_TYPES[column]
        ids = ids_by_type[node_type]
        mask = window[column].notna().to_numpy(bool)
        grouped = (
            stats[mask]
            .groupby(window[column][mask].to_numpy())
            .agg(
                {
                    "one": "sum",
                    "in_1d": "sum",
                    "in_7d": "sum",
                    "la": "sum",
                    "la2": "sum",
                    "labelled": "sum",
                    "fraud": "sum",
                    "age": "min",
                }
            )
            .reindex(ids)
        )
        x = _node_features(grouped, degree[node_type], history_days)
        nodes[node_type] = NodeSet(ids, np.vstack([x, cold_features(history_days)]))
    return GraphSnapshot(cutoff.floor("us").to_pydatetime(), nodes, edge_index)


def cold_features(history_days: float) -> npt.NDArray[np.float32]:
    """What an entity with no history looks like: the row unseen entities are scored as."""
    row = np.zeros((1, len(NODE_FEATURES)), dtype=np.float32)
    row[0, NODE_FEATURES.index("log_days_since_last")] = np.log1p(history_days)
    return row


def _node_features(
    grouped: pd.DataFrame, degree: npt.NDArray[np.float64], history_days: float
) -> npt.NDArray[np.float32]:
    n = grouped["one"].to_numpy(np.float64)
    mean = grouped["la"].to_numpy(np.float64) / np.maximum(n, 1)
    var = grouped["la2"].to_numpy(np.float64) / np.maximum(n, 1) - mean**2
    labelled = grouped["labelled"].to_numpy(np.float64)
    fraud = grouped["fraud"].to_numpy(np.float64)
    columns = {
        "log_tx": np.log1p(n),
        "log_tx_1d": np.log1p(grouped["in_1d"].to_numpy(np.float64)),
        "log_tx_7d": np.log1p(grouped["in_7d"].to_numpy(np.float64)),
        "mean_log_amount": mean,
        "std_log_amount": np.sqrt(np.clip(var, 0, None)),
        "log_labelled": np.log1p(labelled),
        # Over all transactions, not only labelled ones: genuine payments are rarely
        # labelled explicitly (no chargeback is the usual "label"), so a rate over the
        # labelled ones would read near 1 wherever anything was ever labelled.
        "known_fraud_rate": fraud / np.maximum(n, 1),
        "log_known_fraud": np.log1p(fraud),
        "log_days_since_last": np.log1p(
            np.minimum(grouped["age"].to_numpy(np.float64), history_days)
        ),
        "log_degree": np.log1p(degree),
    }
    return np.column_stack([columns[name] for name in NODE_FEATURES]).astype(np.float32)


def _ids(column: pd.Series) -> npt.NDArray[np.str_]:
    values = column.dropna().unique()
    return np.sort(np.asarray(values, dtype=str))


def utc_timestamp(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    """A timestamp in UTC; a naive one is taken to be UTC already."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def _utc(times: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(times, utc=False)
    if parsed.dt.tz is None:
        return parsed.dt.tz_localize(UTC).astype("datetime64[ns, UTC]")
    return parsed.dt.tz_convert(UTC).astype("datetime64[ns, UTC]")


def _empty_edges(entity_columns: Sequence[str]) -> pd.DataFrame:
    empty = pd.DataFrame(
        {
            "event_time": pd.Series([], dtype="datetime64[ns, UTC]"),
            "amount": pd.Series([], dtype=np.float64),
        }
    )
    for column in entity_columns:
        empty[column] = pd.Series([], dtype=object)
    return normalise_transactions(empty, entity_columns)
