"""Reading the ops-edited rule file: TOML in, a checked :class:`RuleSet` out.

The file (default ``config/rules.toml``) is a list of ``[[rule]]`` tables::

    [[rule]]
    id = "denylisted_card"                 # unique, snake_case
    when = "card_denylisted"               # a SQL condition, see models/rules/language.py
    action = "decline"                     # decline | review | allow | adjust
    reason = "DENYLIST_CARD"               # reason code on the decision
    description = "Card is on the deny list"
    # adjust = 0.2                         # only with action = "adjust": added to the score
    # enabled = false                      # keep a rule in the file without running it

A file with any problem is rejected as a whole with :class:`RuleFileError` naming the
file, the line and the key (``rule[3].when``); nothing in it is ever executed: TOML is
data, and each ``when`` goes through the checks of the expression language.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fraudstream.errors import RuleFileError
from models.rules.language import (
    CompiledExpression,
    ExpressionRejected,
    compile_expression,
    known_columns,
    probe_frame,
)

Action = Literal["decline", "review", "allow", "adjust"]
MAX_RULES = 500
MAX_FILE_BYTES = 1_000_000


class RuleSpec(BaseModel):
    """One ``[[rule]]`` table as written in the file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    when: str = Field(min_length=1)
    action: Action
    reason: str = Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")
    description: str = Field(min_length=1, max_length=256)
    adjust: float | None = Field(default=None, ge=-1.0, le=1.0)
    enabled: bool = True


@dataclass(frozen=True)
class Rule:
    id: str
    action: Action
    reason: str
    description: str
    adjust: float
    condition: CompiledExpression

    @property
    def when(self) -> str:
        return self.condition.text


@dataclass(frozen=True)
class RuleSet:
    """A checked, immutable set of enabled rules, in file order."""

    rules: tuple[Rule, ...]
    source: str
    text: str
    digest: str
    features: frozenset[str] | None

    @property
    def version(self) -> str:
        return f"rules-{self.digest[:12]}"

    # Cached: both are read for every batch the engine decides.
    @cached_property
    def columns(self) -> frozenset[str]:
        """Every column some rule reads; only these are built for a batch."""
        used: set[str] = set()
        for rule in self.rules:
            used |= rule.condition.columns
        return frozenset(used)

    @cached_property
    def hit_expressions(self) -> tuple[pl.Expr, ...]:
        """Each rule's condition as one boolean column; a missing value never fires."""
        return tuple(
            r.condition.expr.fill_null(False).alias(f"__rule_{i}__")
            for i, r in enumerate(self.rules)
        )

    @cached_property
    def hit_columns(self) -> tuple[str, ...]:
        return tuple(e.meta.output_name() for e in self.hit_expressions)

    def current(self) -> RuleSet:
        """A fixed rule set is its own source (see ``RuleBook`` for a reloading one)."""
        return self


def load_rule_file(path: Path, features: Collection[str] | None = None) -> RuleSet:
    """Read and check ``path``; raises :class:`RuleFileError` on any problem."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RuleFileError(str(path), "-", f"file is larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleFileError(str(path), "-", f"cannot read file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RuleFileError(str(path), "-", f"not UTF-8 text: {exc.reason}") from exc
    return parse_rules(text, str(path), features)


def parse_rules(text: str, source: str, features: Collection[str] | None = None) -> RuleSet:
    """Check rule file ``text`` (``source`` names it in errors).

    ``features``: the feature names rules may use. ``None`` accepts any snake_case name
    as a feature (see ``compile_expression(open_features=...)``).
    """
    feature_set = frozenset(features) if features is not None else None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise RuleFileError(source, "-", f"invalid TOML: {exc}", line) from exc
    extra = sorted(set(document) - {"rule"})
    if extra:
        raise RuleFileError(
            source,
            extra[0],
            "unknown top-level key; rules go in [[rule]] tables",
            _key_line(text, None, extra[0]),
        )
    specs = document.get("rule", [])
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise RuleFileError(
            source, "rule", "rules must be [[rule]] tables", _key_line(text, None, "rule")
        )
    if len(specs) > MAX_RULES:
        raise RuleFileError(source, "rule", f"more than {MAX_RULES} rules")
    columns = known_columns(feature_set)
    probe = probe_frame(columns)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(specs):
        spec = _validate(raw, index, text, source)
        if spec.id in seen:
            raise RuleFileError(
                source,
                f"rule[{index}].id",
                f"duplicate id {spec.id!r} (also rule[{seen[spec.id]}])",
                _key_line(text, index, "id"),
            )
        seen[spec.id] = index
        if (spec.action == "adjust") != (spec.adjust is not None):
            reason = (
                "action 'adjust' needs an adjust value"
                if spec.action == "adjust"
                else f"adjust is only allowed with action 'adjust', not {spec.action!r}"
            )
            key = "adjust" if spec.adjust is not None else "action"
            raise RuleFileError(source, f"rule[{index}].{key}", reason, _key_line(text, index, key))
        try:
            condition = compile_expression(
                spec.when, columns, open_features=feature_set is None, probe=probe
            )
        except ExpressionRejected as exc:
            raise RuleFileError(
                source, f"rule[{index}].when", str(exc), _key_line(text, index, "when")
            ) from None
        if spec.enabled:
            rules.append(
                Rule(
                    spec.id,
                    spec.action,
                    spec.reason,
                    spec.description,
                    spec.adjust or 0.0,
                    condition,
                )
            )
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return RuleSet(tuple(rules), source, text, digest, feature_set)


def _validate(raw: dict[str, Any], index: int, text: str, source: str) -> RuleSpec:
    try:
        return RuleSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "-"
        message = str(error["msg"])
        if error["type"] == "missing":
            line = _block_line(text, index)
        else:
            line = _key_line(text, index, field)
        raise RuleFileError(source, f"rule[{index}].{field}", message, line) from None


# --- locating a key in the text: tomllib keeps no positions --------------------------------

_HEADER = re.compile(r"^\s*\[")
_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]\s*(#.*)?$")


def _block_line(text: str, index: int) -> int | None:
    """1-based line of the ``index``-th ``[[rule]]`` header."""
    count = -1
    for number, line in enumerate(text.splitlines(), start=1):
        if _RULE_HEADER.match(line):
            count += 1
            if count == index:
                return number
    return None


def _key_line(text: str, index: int | None, key: str) -> int | None:
    """Line of ``key = ...`` inside rule ``index``; for ``index=None``, of a top-level key
    or table named ``key``. Falls back to the rule's header line."""
    lines = text.splitlines()
    assignment = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    if index is None:
        table = re.compile(rf"^\s*\[\[?\s*{re.escape(key)}\s*\]")
        for number, line in enumerate(lines, start=1):
            if assignment.match(line) or table.match(line):
                return number
        return None
    start = _block_line(text, index)
    if start is None:
        return None
    for number in range(start + 1, len(lines) + 1):
        line = lines[number - 1]
        if _HEADER.match(line):
            break
        if assignment.match(line):
            return number
    return start
