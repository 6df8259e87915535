"""Allow and deny lists: sets of card ids, devices, IPs, terminals and merchants.

Each list is one Redis set, ``<prefix>:<entity>:<deny|allow>`` (card ids are tokens,
never card numbers). A batch reads every list its rules use in one pipeline of
``SMISMEMBER`` calls, so the lists cost one round trip per micro-batch whatever the
batch size. Rules see the answers as boolean columns named like ``card_denylisted``.

:class:`InMemoryListStore` is the twin for tests and for a scorer loaded from disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fraudstream.errors import FeatureStoreUnavailable
from models.rules.language import LIST_COLUMNS, LIST_ENTITIES

Flags = npt.NDArray[np.bool_]


class ListStoreUnavailable(FeatureStoreUnavailable):
    """The lists could not be read; rules on them see 'unknown' for this batch."""


def list_key(prefix: str, column: str) -> str:
    """``card_denylisted`` -> ``<prefix>:card:deny``."""
    if column not in LIST_COLUMNS:
        raise ValueError(f"{column!r} is not a list; known: {sorted(LIST_COLUMNS)}")
    entity, kind = column.rsplit("_", 1)
    return f"{prefix}:{entity}:{kind.removesuffix('listed')}"


def entity_field(column: str) -> str:
    """The transaction field a list column looks up: ``card_denylisted`` -> ``card_id``."""
    return LIST_ENTITIES[column.rsplit("_", 1)[0]]


class ListStore(Protocol):
    def contains(self, lookups: Mapping[str, Sequence[str | None]]) -> dict[str, Flags]:
        """For each list column, whether each value is on it (``None`` never is)."""
        ...

    def add(self, column: str, values: Iterable[str]) -> None: ...

    def remove(self, column: str, values: Iterable[str]) -> None: ...


class InMemoryListStore:
    def __init__(self, initial: Mapping[str, Iterable[str]] | None = None) -> None:
        self._sets: dict[str, set[str]] = {c: set() for c in LIST_COLUMNS}
        for column, values in (initial or {}).items():
            self.add(column, values)

    def contains(self, lookups: Mapping[str, Sequence[str | None]]) -> dict[str, Flags]:
        out: dict[str, Flags] = {}
        for column, values in lookups.items():
            members = self._sets[_checked(column)]
            out[column] = np.fromiter(
                (v is not None and v in members for v in values), dtype=np.bool_, count=len(values)
            )
        return out

    def add(self, column: str, values: Iterable[str]) -> None:
        self._sets[_checked(column)].update(values)

    def remove(self, column: str, values: Iterable[str]) -> None:
        self._sets[_checked(column)].difference_update(values)


class RedisListStore:
    """Lists in Redis sets. ``client`` is a redis-py ``Redis`` built from the settings
    (its socket timeout bounds how long a batch can wait on the lists)."""

    def __init__(self, client: Any, prefix: str = "fraudstream:list") -> None:
        self._client = client
        self._prefix = prefix

    def contains(self, lookups: Mapping[str, Sequence[str | None]]) -> dict[str, Flags]:
        import redis

        asked: list[tuple[str, list[int]]] = []
        pipe = self._client.pipeline(transaction=False)
        for column, values in lookups.items():
            present = [i for i, v in enumerate(values) if v is not None]
            if present:
                pipe.smismember(list_key(self._prefix, column), [values[i] for i in present])
                asked.append((column, present))
        try:
            answers = pipe.execute() if asked else []
        except redis.RedisError as exc:
            raise ListStoreUnavailable(f"allow/deny lists: {exc}") from exc
        out = {column: np.zeros(len(values), dtype=np.bool_) for column, values in lookups.items()}
        for (column, present), answer in zip(asked, answers, strict=True):
            out[column][present] = np.asarray([bool(a) for a in answer], dtype=np.bool_)
        return out

    def add(self, column: str, values: Iterable[str]) -> None:
        members = list(values)
        if members:
            self._client.sadd(list_key(self._prefix, column), *members)

    def remove(self, column: str, values: Iterable[str]) -> None:
        members = list(values)
        if members:
            self._client.srem(list_key(self._prefix, column), *members)


def _checked(column: str) -> str:
    if column not in LIST_COLUMNS:
        raise ValueError(f"{column!r} is not a list; known: {sorted(LIST_COLUMNS)}")
    return column
