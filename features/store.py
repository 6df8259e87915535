"""The feature store interface the scoring engine depends on.

Two implementations: :class:`features.online.RedisFeatureStore` (production: one Lua
script call per micro-batch) and :class:`features.twin.InMemoryFeatureStore` (tests and
backtests). Both compute exactly :data:`features.definitions.FEATURES`; the parity tests
hold them, and the offline builder, to the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from features.matrix import FeatureMatrix
from fraudstream.wire.schemas import LabelEvent, Transaction


@runtime_checkable
class FeatureStore(Protocol):
    """Reads and updates feature state for one micro-batch at a time.

    ``compute`` returns one row per transaction, in order, with columns
    ``feature_names``. Each transaction updates the state exactly once, whatever the
    number of deliveries: computing a transaction again returns its features without
    counting it twice. Transactions in one batch see the ones before them (in event
    order) whether they came in the same batch or an earlier one.

    ``apply_labels`` records fraud / genuine verdicts; they change risk features of
    transactions scored afterwards, within the label delay windows. Returns how many
    labels changed the state (a repeated label changes nothing).

    Errors: ``fraudstream.errors.FeatureStoreError`` subclasses, raised with no partial
    update left behind.
    """

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    @property
    def definitions_hash(self) -> str: ...

    def compute(self, transactions: Sequence[Transaction]) -> FeatureMatrix: ...

    def apply_labels(self, labels: Sequence[LabelEvent]) -> int: ...
