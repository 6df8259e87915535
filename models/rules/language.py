"""The rule expression language: a whitelisted subset of SQL expressions, run by polars.

A rule's ``when`` is one SQL boolean expression over the batch's columns, e.g.
``amount > 500 AND channel = 'ecom' AND mcc IN ('5967', '7995')``. Polars parses and
evaluates it vectorised in Rust; nothing in this path ever reaches Python's ``eval``.

Polars' SQL is richer than a rule needs (aggregates, window functions, subqueries, the
current time), and a rule must be a per-row predicate: the same row must give the same
answer alone or in any batch, today or tomorrow. So every expression passes three
independent checks before it is accepted, and anything not explicitly allowed is
rejected:

1. **Tokens** (our own scanner, before polars sees the text): only literals, known
   column names, whitelisted function names, operators and a fixed keyword set; no
   ``;``, comments, brackets, ``::`` casts, ``SELECT``/``OVER``/... keywords.
2. **Expression tree** (what polars built, read through its JSON serialisation): only
   columns, literals, comparison/boolean/arithmetic operators, ``CASE``, casts and a
   whitelist of scalar functions. Aggregations, windows, subplans, ``len`` and every
   node kind this module does not know are refused, so a polars upgrade that changes
   the tree fails closed (rules rejected), never open.
3. **Type and probe**: the expression must type-check to a boolean over the batch schema
   and evaluate on a small probe frame without error.

Why polars SQL rather than CEL: polars is already a dependency, evaluates a whole
micro-batch in one call, and SQL predicates are what fraud analysts already write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

MAX_EXPRESSION_CHARS = 2000
# What polars may raise on a bad expression: its errors, or a Rust panic, which pyo3
# turns into a BaseException subclass that ``except Exception`` would let through.
POLARS_ERRORS: tuple[type[BaseException], ...] = (Exception, pl.exceptions.PanicException)
MAX_TREE_NODES = 2000

# Transaction fields a rule may use, with their column types in the batch frame.
# ``hour`` and ``weekday`` (1 = Monday) are derived from ``event_time`` in UTC.
TRANSACTION_COLUMNS: dict[str, pl.DataType] = {
    "transaction_id": pl.String(),
    "card_id": pl.String(),
    "terminal_id": pl.String(),
    "merchant_id": pl.String(),
    "device_id": pl.String(),
    "ip": pl.String(),
    "currency": pl.String(),
    "country": pl.String(),
    "mcc": pl.String(),
    "channel": pl.String(),
    "amount": pl.Float64(),
    "latitude": pl.Float64(),
    "longitude": pl.Float64(),
    # Naive UTC, so that ``event_time > TIMESTAMP '2026-01-01 00:00:00'`` compares.
    "event_time": pl.Datetime("us"),
    "hour": pl.Int8(),
    "weekday": pl.Int8(),
}

# Entities with allow/deny lists; each gives ``<entity>_denylisted`` / ``_allowlisted``.
LIST_ENTITIES: dict[str, str] = {
    "card": "card_id",
    "device": "device_id",
    "ip": "ip",
    "terminal": "terminal_id",
    "merchant": "merchant_id",
}
LIST_KINDS = ("denylisted", "allowlisted")
LIST_COLUMNS: dict[str, pl.DataType] = {
    f"{entity}_{kind}": pl.Boolean() for entity in LIST_ENTITIES for kind in LIST_KINDS
}

_FEATURE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# --- check 1: tokens ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")+")
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|\|\||//|[=<>+\-*/%(),])
    """,
    re.VERBOSE,
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# SQL function names a rule may call: scalar, deterministic, row-wise.
ALLOWED_FUNCTIONS = _words(
    """
    abs coalesce greatest least nullif if lower upper initcap length char_length
    character_length octet_length starts_with ends_with regexp_like substr substring
    left right strpos trim ltrim rtrim concat round floor ceil ceiling sqrt ln log log2
    log10 exp power pow mod sign date_part cast try_cast
    """
)
# Words that may stand in an expression without being a column or a function call.
_KEYWORDS = _words(
    """
    and or not in is null true false between like ilike case when then else end as
    distinct xor
    """
)
# Statement and set keywords: a rule is one expression, never a query.
_FORBIDDEN = _words(
    """
    select where with union intersect except insert update delete drop create alter
    over partition window join table values into exists any all some array limit order
    group having exec execute call set
    """
)
# Type names, allowed only after ``AS`` in a cast or before a string (``DATE '...'``).
_TYPE_WORDS = _words(
    """
    int integer bigint smallint tinyint float double real decimal numeric varchar text
    string boolean bool date timestamp precision
    """
)


class ExpressionRejected(ValueError):
    """A ``when`` expression is not a valid, safe rule predicate; the message says why."""


def _scan(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text.startswith(("--", "/*"), position):
            raise ExpressionRejected(f"comments are not allowed (at character {position + 1})")
        match = _TOKEN.match(text, position)
        if match is None:
            char = text[position]
            raise ExpressionRejected(
                f"character {char!r} is not allowed (at character {position + 1})"
            )
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _check_tokens(text: str, columns: Mapping[str, pl.DataType]) -> set[str]:
    """Raises on anything not allowed; returns the identifiers that are not known columns."""
    unknown: set[str] = set()
    tokens = _scan(text)
    if not tokens:
        raise ExpressionRejected("the expression is empty")
    for index, (kind, value) in enumerate(tokens):
        if kind == "quoted":
            name = value[1:-1].replace('""', '"')
            if name not in columns:
                unknown.add(name)
        elif kind == "word" and not _allowed_word(tokens, index) and value not in columns:
            unknown.add(value)
    return unknown


def _allowed_word(tokens: list[tuple[str, str]], index: int) -> bool:
    """Whether the word at ``index`` is a function, keyword or type name where it stands;
    raises when it is a word a rule must not contain."""
    value = tokens[index][1]
    word = value.lower()
    before = tokens[index - 1][1].lower() if index else ""
    after = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
    if word in _FORBIDDEN:
        raise ExpressionRejected(f"{value!r} is not allowed: a rule is one per-row condition")
    if after[1] == "(" and word not in _KEYWORDS:
        if word not in ALLOWED_FUNCTIONS:
            raise ExpressionRejected(f"function {value!r} is not allowed")
        if index + 2 < len(tokens) and tokens[index + 2][1] == ")":
            # None of ours takes no argument, and polars panics on some that way.
            raise ExpressionRejected(f"function {value!r} needs arguments")
        return True
    if word == "from":
        if before != "distinct":  # only IS [NOT] DISTINCT FROM
            raise ExpressionRejected("'FROM' is not allowed: a rule is one per-row condition")
        return True
    if word in _KEYWORDS:
        return True
    return word in _TYPE_WORDS and (before == "as" or after[0] == "string" or before in _TYPE_WORDS)


# --- check 2: the expression tree polars built ---------------------------------------------

_BINARY_OPERATORS = _words(
    """
    Eq NotEq Lt LtEq Gt GtEq EqValidity NotEqValidity And Or Xor LogicalAnd LogicalOr
    Plus Minus Multiply Divide TrueDivide FloorDivide Modulus
    """
)
_TREE_FUNCTIONS = _words(
    """
    Abs Coalesce MaxHorizontal MinHorizontal Ceil Floor Exp Log Sign FillNull
    Boolean.Not Boolean.IsNull Boolean.IsNotNull Pow.Sqrt Pow.Generic Sql.Round
    Sql.ToFloat Sql.IsIn Sql.Binary.Div Sql.Binary.Mul Sql.Binary.Rem Sql.Binary.IntDiv
    Sql.Binary.Plus Sql.Binary.Minus Sql.Binary.Eq Sql.Binary.NotEq Sql.Binary.Gt
    Sql.Binary.GtEq Sql.Binary.Lt Sql.Binary.LtEq StringExpr.Lowercase
    StringExpr.Uppercase StringExpr.Titlecase StringExpr.LenChars StringExpr.LenBytes
    StringExpr.StartsWith StringExpr.EndsWith StringExpr.Contains StringExpr.Slice
    StringExpr.Find StringExpr.StripChars StringExpr.StripCharsStart
    StringExpr.StripCharsEnd StringExpr.ConcatHorizontal TemporalExpr.Year
    TemporalExpr.Month TemporalExpr.Day TemporalExpr.Hour TemporalExpr.Minute
    TemporalExpr.WeekDay
    """
)


def _function_identity(function: Any) -> str:
    """``{"Sql": {"Binary": "Div"}}`` -> ``Sql.Binary.Div``; parameters are not part of it."""
    parts: list[str] = []
    while True:
        if isinstance(function, str):
            parts.append(function)
            break
        if isinstance(function, dict) and len(function) == 1:
            key, value = next(iter(function.items()))
            if not key[:1].isupper():
                break
            parts.append(key)
            function = value
            continue
        break
    return ".".join(parts)


def _check_tree(expression: pl.Expr, columns: Mapping[str, pl.DataType]) -> None:
    try:
        tree = json.loads(expression.meta.serialize(format="json"))
    except (RecursionError, ValueError) as exc:
        raise ExpressionRejected("the expression is too deeply nested") from exc
    pending: list[Any] = [tree]
    seen = 0
    while pending:
        seen += 1
        if seen > MAX_TREE_NODES:
            raise ExpressionRejected(f"the expression has more than {MAX_TREE_NODES} parts")
        pending += _checked_children(pending.pop(), columns)


def _checked_children(node: Any, columns: Mapping[str, pl.DataType]) -> list[Any]:
    """Check one tree node; return the sub-expressions still to check."""
    if not (isinstance(node, dict) and len(node) == 1):
        raise ExpressionRejected(f"construct {str(node)[:40]!r} is not allowed in a rule")
    kind, body = next(iter(node.items()))
    if kind == "Column":
        if body not in columns:
            raise ExpressionRejected(f"unknown column {body!r}")
        return []
    if kind == "Literal":
        return []  # data, never code
    if kind == "BinaryExpr":
        if body.get("op") not in _BINARY_OPERATORS:
            raise ExpressionRejected(f"operator {body.get('op')!r} is not allowed")
        return [body["left"], body["right"]]
    if kind == "Ternary":
        return [body["predicate"], body["truthy"], body["falsy"]]
    if kind == "Cast":
        return [body["expr"]]
    if kind == "Function":
        identity = _function_identity(body.get("function"))
        if identity not in _TREE_FUNCTIONS:
            raise ExpressionRejected(f"operation {identity or '?'} is not allowed in a rule")
        return list(body.get("input", []))
    raise ExpressionRejected(
        f"{kind} is not allowed in a rule (rules are per-row: no aggregates, windows or subqueries)"
    )


# --- check 3: type and probe ------------------------------------------------------------


def probe_frame(columns: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Three rows that exercise every column: typical values, nulls, edge values."""
    samples: dict[type[pl.DataType], tuple[Any, Any]] = {
        pl.String: ("FR", "0"),
        pl.Float64: (42.5, 0.0),
        pl.Int8: (12, 0),
        pl.Boolean: (False, True),
        pl.Datetime: (datetime(2026, 1, 1, 12), datetime(2026, 1, 4)),
    }
    data = {}
    for name, dtype in columns.items():
        typical, edge = samples[type(dtype)]
        if name == "mcc":
            typical = "5411"
        data[name] = [typical, None, edge]
    return pl.DataFrame(data, schema=dict(columns))


@dataclass(frozen=True)
class CompiledExpression:
    text: str
    expr: pl.Expr
    columns: frozenset[str]


def compile_expression(
    text: str,
    columns: Mapping[str, pl.DataType],
    *,
    open_features: bool = False,
    probe: pl.DataFrame | None = None,
) -> CompiledExpression:
    """Parse, check and type ``text``; raises :class:`ExpressionRejected` with the reason.

    ``open_features``: an unknown snake_case name is taken to be a (float) feature column
    instead of an error. Only for when the feature set is not known at load time; a typo
    then makes a rule that never fires, so production passes the feature names.
    """
    if not isinstance(text, str):
        raise ExpressionRejected("the expression must be a string")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionRejected(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    unknown = _check_tokens(text, columns)
    if unknown:
        bad = sorted(n for n in unknown if not (open_features and is_feature_name(n)))
        if bad:
            raise ExpressionRejected(f"unknown column or keyword {bad[0]!r}")
        columns = {**columns, **{n: pl.Float64() for n in sorted(unknown)}}
        probe = None
    try:
        expr = pl.sql_expr(text)
    except POLARS_ERRORS as exc:  # several SQL error types (or a panic); all mean "invalid"
        raise ExpressionRejected(f"not a valid SQL expression: {_first_line(exc)}") from exc
    _check_tree(expr, columns)
    used = frozenset(expr.meta.root_names())
    if not used <= set(columns):
        raise ExpressionRejected(f"unknown column(s) {sorted(used - set(columns))}")
    probe = probe if probe is not None else probe_frame(columns)
    try:
        result = evaluate_column(probe, expr)
    except POLARS_ERRORS as exc:  # a type error polars finds only when it evaluates
        raise ExpressionRejected(f"cannot be evaluated: {_first_line(exc)}") from exc
    if result.dtype != pl.Boolean or len(result) != probe.height:
        raise ExpressionRejected(f"must be a true/false condition per row, not {result.dtype}")
    return CompiledExpression(text, expr, used)


def evaluate_column(frame: pl.DataFrame, expr: pl.Expr) -> pl.Series:
    """``expr`` over ``frame``, one value per row (a constant such as ``TRUE`` is broadcast)."""
    return frame.with_columns(expr.alias("__hit__")).get_column("__hit__")


def feature_columns(names: frozenset[str] | None) -> dict[str, pl.DataType]:
    """Columns for feature names (floats); transaction fields win over a same-named feature."""
    if names is None:
        return {}
    return {n: pl.Float64() for n in sorted(names) if n not in TRANSACTION_COLUMNS}


def known_columns(features: frozenset[str] | None) -> dict[str, pl.DataType]:
    return {**TRANSACTION_COLUMNS, **LIST_COLUMNS, **feature_columns(features)}


def is_feature_name(name: str) -> bool:
    return bool(_FEATURE_NAME.match(name))


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return message[0][:200] if message else type(exc).__name__
