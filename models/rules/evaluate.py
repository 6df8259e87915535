"""Evaluating a rule set over a micro-batch, vectorised, and what its hits mean.

One polars frame is built per batch with only the columns the rules read (transaction
fields, allow/deny list flags, features), and every rule runs in one polars call.
A missing value (a NaN feature, an absent field, an unreadable list) is SQL ``NULL``,
and a condition that comes out ``NULL`` does not fire: a rule fires only on what is
known. ``IS NULL`` tests for missing values explicitly.

Precedence, per row (the same in :attr:`RuleEvaluation.scores` and in
``models/decide.py``):

1. any ``decline`` rule fires -> decline, whatever else fires (deny beats allow: an
   allow-listed card on a deny-listed device is declined);
2. else any ``allow`` rule fires -> approve, whatever the models say;
3. else the models decide on their probability plus the sum of fired ``adjust`` values
   (clipped to [0, 1]), and any fired ``review`` rule raises approve to review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from fraudstream.errors import FeatureStoreError
from fraudstream.wire.schemas import Reason
from models.base import Scores, ScoringBatch
from models.rules.language import (
    LIST_COLUMNS,
    POLARS_ERRORS,
    TRANSACTION_COLUMNS,
    evaluate_column,
)
from models.rules.lists import ListStore, entity_field
from models.rules.loader import RuleSet

LAYER = "rules"
# Columns of :meth:`RuleEvaluation.flags`, the rule layer's input to the meta-ensemble.
FLAG_NAMES: tuple[str, ...] = ("rule_decline", "rule_review", "rule_allow", "rule_adjust")
_SEVERITY = {"decline": 0, "allow": 1, "review": 2, "adjust": 3}


class RulesSettings(BaseModel):
    """Knobs of the rule layer (proposed ``[rules]`` settings section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # How often the rule file is re-read for changes; each check costs one small read.
    reload_interval_s: float = Field(default=1.0, ge=0.0)
    # The rule layer's own score for a row where only review rules fire.
    review_score: float = Field(default=0.7, ge=0.0, le=1.0)
    list_prefix: str = "fraudstream:list"


@dataclass(frozen=True)
class RuleEvaluation:
    """Which rule fired on which row, and what that means."""

    ruleset: RuleSet
    hits: npt.NDArray[np.bool_]  # (rows, rules), in rule file order
    lists_ok: bool = True
    # (rule id, error) for rules that could not be evaluated on this batch (not fired).
    errors: tuple[tuple[str, str], ...] = ()
    _masks: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.hits.shape[0])

    def fired(self, action: str) -> npt.NDArray[np.bool_]:
        cached = self._masks.get(action)
        if cached is not None:
            return cached
        columns = [i for i, r in enumerate(self.ruleset.rules) if r.action == action]
        mask: npt.NDArray[np.bool_] = np.zeros(len(self), dtype=np.bool_)
        if columns:
            mask = np.asarray(self.hits[:, columns].any(axis=1), dtype=np.bool_)
        self._masks[action] = mask
        return mask

    @property
    def decline(self) -> npt.NDArray[np.bool_]:
        return self.fired("decline")

    @property
    def allow(self) -> npt.NDArray[np.bool_]:
        """Allow rules that take effect: not overridden by a decline rule."""
        return self.fired("allow") & ~self.decline

    @property
    def review(self) -> npt.NDArray[np.bool_]:
        return self.fired("review") & ~self.decline & ~self.fired("allow")

    @property
    def adjustment(self) -> npt.NDArray[np.float64]:
        weights = np.array(
            [r.adjust if r.action == "adjust" else 0.0 for r in self.ruleset.rules],
            dtype=np.float64,
        )
        return self.hits.astype(np.float64) @ weights if len(weights) else np.zeros(len(self))

    def flags(self) -> npt.NDArray[np.float64]:
        """(rows, 4) inputs for the meta-ensemble, see :data:`FLAG_NAMES`."""
        return (
            np.column_stack(
                [self.fired("decline"), self.fired("review"), self.fired("allow"), self.adjustment]
            )
            .astype(np.float64)
            .reshape(len(self), len(FLAG_NAMES))
        )

    def scores(self, settings: RulesSettings) -> Scores:
        """The rule layer's score: 1 decline, 0 allow, else adjustments, review at least
        ``review_score``."""
        base = np.clip(self.adjustment, 0.0, 1.0)
        base = np.where(self.fired("review"), np.maximum(base, settings.review_score), base)
        return np.where(self.decline, 1.0, np.where(self.allow, 0.0, base)).astype(np.float64)

    def reasons(self, row: int) -> list[Reason]:
        """Fired rules of ``row``, most decisive first (decline, allow, review, adjust)."""
        fired = [r for r, hit in zip(self.ruleset.rules, self.hits[row], strict=True) if hit]
        fired.sort(key=lambda r: (_SEVERITY[r.action], -abs(r.adjust)))
        return [Reason(code=r.reason, text=r.description, layer=LAYER) for r in fired]

    def fired_ids(self, row: int) -> list[str]:
        return [r.id for r, hit in zip(self.ruleset.rules, self.hits[row], strict=True) if hit]


def evaluate(
    ruleset: RuleSet, batch: ScoringBatch, lists: ListStore | None = None
) -> RuleEvaluation:
    """Every rule of ``ruleset`` over ``batch`` in one vectorised pass."""
    frame, lists_ok = batch_frame(batch, ruleset.columns, lists)
    rules = ruleset.rules
    if not rules:
        return RuleEvaluation(ruleset, np.zeros((len(batch), 0), dtype=np.bool_), lists_ok)
    exprs = ruleset.hit_expressions
    errors: list[tuple[str, str]] = []
    try:
        # with_columns, not select: a condition that reads no column is broadcast
        hits = frame.with_columns(exprs).select(ruleset.hit_columns).to_numpy()
    except POLARS_ERRORS:  # one bad rule must not silence the others: retry one by one
        columns = []
        for rule, expr in zip(rules, exprs, strict=True):
            try:
                columns.append(evaluate_column(frame, expr).to_numpy())
            except POLARS_ERRORS as exc:
                errors.append((rule.id, str(exc).splitlines()[0][:200] if str(exc) else repr(exc)))
                columns.append(np.zeros(len(batch), dtype=np.bool_))
        hits = np.column_stack(columns) if columns else np.zeros((len(batch), 0))
    return RuleEvaluation(
        ruleset,
        np.asarray(hits, dtype=np.bool_).reshape(len(batch), len(rules)),
        lists_ok,
        tuple(errors),
    )


def batch_frame(
    batch: ScoringBatch, columns: frozenset[str], lists: ListStore | None
) -> tuple[pl.DataFrame, bool]:
    """A frame of ``columns`` for ``batch``, and whether the lists could be read."""
    series: list[pl.Series] = [pl.Series("__row__", np.arange(len(batch), dtype=np.int64))]
    wanted_lists = sorted(c for c in columns if c in LIST_COLUMNS)
    list_values, lists_ok = _read_lists(batch, wanted_lists, lists)
    for name in sorted(columns):
        if name in TRANSACTION_COLUMNS:
            series.append(_transaction_series(batch, name))
        elif name in LIST_COLUMNS:
            series.append(pl.Series(name, list_values[name], dtype=pl.Boolean))
        else:
            values = batch.features.select([name]).values[:, 0]
            series.append(pl.Series(name, values, dtype=pl.Float64).fill_nan(None))
    return pl.DataFrame(series), lists_ok


def _read_lists(
    batch: ScoringBatch, wanted: list[str], lists: ListStore | None
) -> tuple[dict[str, list[bool | None]], bool]:
    if not wanted:
        return {}, True
    if lists is None:
        return {c: [False] * len(batch) for c in wanted}, True
    lookups = {c: [_str_or_none(v) for v in batch.field(entity_field(c))] for c in wanted}
    try:
        found = lists.contains(lookups)
    except FeatureStoreError:
        # Unknown, not "not listed": rules on lists stay silent, the decision is degraded.
        return {c: [None] * len(batch) for c in wanted}, False
    return {c: [bool(x) for x in found[c]] for c in wanted}, True


def _transaction_series(batch: ScoringBatch, name: str) -> pl.Series:
    dtype = TRANSACTION_COLUMNS[name]
    if name in ("event_time", "hour", "weekday"):
        utc = [_naive_utc(t) for t in batch.field("event_time")]
        if name == "hour":
            return pl.Series(name, [t.hour if t else None for t in utc], dtype=dtype)
        if name == "weekday":
            return pl.Series(name, [t.isoweekday() if t else None for t in utc], dtype=dtype)
        return pl.Series(name, utc, dtype=dtype)
    return pl.Series(name, list(batch.field(name)), dtype=dtype)


def _naive_utc(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
