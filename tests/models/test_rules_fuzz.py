"""Fuzzing the rule language and the rule file: nothing in them can execute code.

Every generated ``when`` expression (random text, and random mixes of the language's
own pieces with Python, SQL injection, polars calls, aggregates, deep nesting and
unicode) must either be rejected with the language's error or compile to a condition
that gives one true/false per row. Meanwhile a Python audit hook watches for code
being compiled or executed and for processes being started, and a sentinel file the
dangerous payloads try to create must never appear.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.matrix import FeatureMatrix
from fraudstream.errors import RuleFileError
from models.base import ScoringBatch
from models.rules import (
    ExpressionRejected,
    compile_expression,
    evaluate,
    known_columns,
    parse_rules,
)
from models.rules.language import ALLOWED_FUNCTIONS
from tests.code_watch import CodeWatch, seen
from tests.models.factories_rules import RULE_FEATURES, batches, make_tx, rule_batch

SENTINEL = Path(tempfile.gettempdir()) / f"fraudstream-rule-fuzz-{np.random.SeedSequence().entropy}"
COLUMNS = known_columns(frozenset(RULE_FEATURES))
BATCH = rule_batch(
    [make_tx(i, amount=float(10 * i), channel=["pos", "ecom", None][i % 3]) for i in range(7)],
    [[float(i), np.nan if i % 2 else 2.0] for i in range(7)],
)


@pytest.fixture(scope="module", autouse=True)
def _warm_up_and_check_sentinel() -> Iterator[None]:
    # Polars and pydantic import parts of themselves on first use; do that unwatched.
    compile_expression("lower(channel) LIKE 'e%' AND amount IN (1, 2)", COLUMNS)
    evaluate(parse_rules(_toml([{"when": "amount > 1"}]), "warm-up", RULE_FEATURES), BATCH)
    yield
    assert not SENTINEL.exists(), "a rule created the sentinel file"


def test_the_watch_sees_code_execution() -> None:
    # The hook must catch what it is there to catch, or the fuzz tests prove nothing.
    with CodeWatch():
        eval("1 + 1")
    assert any(event == "exec" for event, _ in seen)


# --- expression strategies ---------------------------------------------------------------

_payloads = [
    f"__import__('os').system('touch {SENTINEL}')",
    f"open('{SENTINEL}', 'w')",
    "eval('1')",
    "exec('import os')",
    "compile('1', 'x', 'eval')",
    "globals()",
    "__builtins__",
    "pl.col('amount') > 1",
    "lambda: 1",
    "().__class__.__bases__[0].__subclasses__()",
    "amount > 1; DROP TABLE transactions",
    "' OR '1'='1",
    "1 UNION SELECT 1",
    "(SELECT amount FROM transactions)",
    "amount IN (SELECT 1)",
    "read_csv('/etc/passwd')",
    f"read_parquet('{SENTINEL}')",
    "sum(amount) > 1",
    "count(*) > 0",
    "avg(amount) > amount",
    "row_number() OVER (ORDER BY amount) > 1",
    "now() > event_time",
    "random() > 0.5",
    "amount::text = '1'",
    "amount > 1 -- comment",
    "amount > 1 /* c */",
    "$1",
    "`amount`",
    "{amount}",
    "[1, 2]",
    "amount @ 2",
    "\\x00",
    "amount > 1\x00",
    "ＡＭＯＵＮＴ > 1",
    "unnest([1]) > 0",
    "first(amount) > 1",
]
# Odd but harmless: either outcome is fine, they only widen the fuzzing.
_oddities = ["amount > 1e400", "amount > -1e-400", "'\\'' = ''''", "'é' = country", "0 / 0 > 1"]
_atoms = st.one_of(
    st.sampled_from(sorted(COLUMNS)),
    st.sampled_from(["0", "1.5", "-3", "1e3", "'FR'", "'ecom'", "NULL", "TRUE", "FALSE", "''"]),
    st.sampled_from(_payloads + _oddities),
    st.text(min_size=1, max_size=8),
    st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
)
_binary = [
    "AND",
    "OR",
    "=",
    "<>",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "||",
    "LIKE",
    "ILIKE",
    "IS",
    "IS NOT",
    "IS DISTINCT FROM",
    "XOR",
    ";",
    ",",
    "::",
    ".",
    "@",
]
_functions = [*sorted(ALLOWED_FUNCTIONS), "eval", "exec", "__import__", "sum", "read_csv", "now"]


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(_binary), children).map(" ".join),
        children.map(lambda c: f"({c})"),
        children.map(lambda c: f"NOT {c}"),
        st.tuples(st.sampled_from(_functions), st.lists(children, max_size=3)).map(
            lambda f: f"{f[0]}({', '.join(f[1])})"
        ),
        st.tuples(children, st.lists(children, min_size=1, max_size=3)).map(
            lambda t: f"{t[0]} IN ({', '.join(t[1])})"
        ),
        st.tuples(children, children, children).map(
            lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"
        ),
        st.tuples(children, st.sampled_from(["INTEGER", "DOUBLE", "TEXT", "BOOLEAN", "x"])).map(
            lambda t: f"CAST({t[0]} AS {t[1]})"
        ),
    )


# Well-formed conditions built by type, so that the fuzzing also reaches evaluation. The
# left side of every comparison reads a column: a condition on constants alone is not a
# rule, and polars cannot broadcast some of them (CASE on a constant predicate).
_NUMBER_COLUMNS = st.sampled_from(["amount", "latitude", "hour", "weekday", *RULE_FEATURES])
_NUMBER_LITERALS = st.sampled_from(["0", "1", "2.5", "-4", "1e3", "0.001"])
_TEXT_COLUMNS = st.sampled_from(["country", "channel", "mcc", "card_id", "device_id", "ip"])
_TEXT_LITERALS = st.sampled_from(["'FR'", "'ecom'", "''", "'é'", "'it''s'"])


def _numeric(atoms: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.recursive(
        atoms,
        lambda n: st.one_of(
            # No division: x / 0 on a decimal literal is an evaluation error, tested apart.
            st.tuples(n, st.sampled_from(["+", "-", "*"]), n).map(lambda t: f"({' '.join(t)})"),
            n.map(lambda x: f"abs({x})"),
            n.map(lambda x: f"coalesce({x}, 0)"),
            st.tuples(n, n).map(lambda t: f"greatest({t[0]}, {t[1]})"),
            n.map(lambda x: f"round({x}, 1)"),
        ),
        max_leaves=4,
    )


def _text(atoms: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.recursive(
        atoms,
        lambda t: st.one_of(
            t.map(lambda x: f"lower({x})"),
            t.map(lambda x: f"upper({x})"),
            t.map(lambda x: f"trim({x})"),
            t.map(lambda x: f"substr({x}, 1, 2)"),
        ),
        max_leaves=2,
    )


_number_of_row = _numeric(_NUMBER_COLUMNS)
_numbers = _numeric(_NUMBER_COLUMNS | _NUMBER_LITERALS)
_text_of_row = _text(_TEXT_COLUMNS)
_texts = _text(_TEXT_COLUMNS | _TEXT_LITERALS)
_comparisons = st.one_of(
    st.sampled_from(sorted(c for c in COLUMNS if c.endswith("listed"))),
    st.tuples(_number_of_row, st.sampled_from(["=", "<>", "<", "<=", ">", ">="]), _numbers).map(
        " ".join
    ),
    st.tuples(_text_of_row, st.sampled_from(["=", "<>"]), _texts).map(" ".join),
    st.tuples(_text_of_row, st.lists(st.sampled_from(["'FR'", "'NG'", "'pos'"]), min_size=1)).map(
        lambda t: f"{t[0]} IN ({', '.join(t[1])})"
    ),
    _text_of_row.map(lambda x: f"{x} LIKE 'e%'"),
    _number_of_row.map(lambda x: f"{x} IS NULL"),
    st.tuples(_number_of_row, _numbers, _numbers).map(
        lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[2]}"
    ),
)
conditions = st.recursive(
    _comparisons,
    lambda b: st.one_of(
        st.tuples(b, st.sampled_from(["AND", "OR"]), b).map(" ".join),
        b.map(lambda x: f"NOT ({x})"),
        st.tuples(b, b, b).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
    ),
    max_leaves=6,
)

expressions = st.one_of(
    conditions,
    st.text(max_size=120),
    st.recursive(_atoms, _extend, max_leaves=12),
    st.integers(1, 300).map(lambda depth: "(" * depth + "amount > 1" + ")" * depth),
    st.integers(1, 400).map(lambda n: " AND ".join(["amount > 1"] * n)),
)


def _compile_watched(text: str, open_features: bool) -> Any:
    with CodeWatch():
        try:
            compiled = compile_expression(text, COLUMNS, open_features=open_features)
        except ExpressionRejected:
            compiled = None
        hits = None
        if compiled is not None:
            rules = parse_rules(
                _toml([{"when": text}]), "fuzz", None if open_features else RULE_FEATURES
            )
            hits = evaluate(rules, BATCH).hits
    assert seen == [], f"{text!r} triggered {seen}"
    return compiled, hits


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=expressions, open_features=st.booleans())
def test_any_expression_is_rejected_or_is_a_per_row_condition(
    text: str, open_features: bool
) -> None:
    compiled, hits = _compile_watched(text, open_features)
    if compiled is not None:
        assert hits is not None and hits.dtype == np.bool_ and hits.shape == (len(BATCH), 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=conditions)
def test_well_formed_conditions_are_accepted(text: str) -> None:
    # The whitelist must not be so tight that ordinary rules cannot be written.
    compiled, hits = _compile_watched(text, open_features=False)
    assert compiled is not None, text
    assert hits is not None and hits.shape == (len(BATCH), 1)


@pytest.mark.parametrize("payload", _payloads)
def test_known_attacks_are_rejected(payload: str) -> None:
    compiled, _ = _compile_watched(payload, open_features=True)
    assert compiled is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=conditions, batch=batches(max_rows=6))
def test_a_condition_gives_each_row_the_same_answer_alone_or_in_any_batch(
    text: str, batch: ScoringBatch
) -> None:
    rules = parse_rules(_toml([{"when": text}]), "fuzz", RULE_FEATURES)
    together = evaluate(rules, batch)
    assert together.hits.shape == (len(batch), 1)
    for row in range(len(batch)):
        alone = ScoringBatch(
            [batch.transactions[row]],
            FeatureMatrix(batch.features.names, batch.features.values[row : row + 1]),
        )
        single = evaluate(rules, alone)
        if not (together.errors or single.errors):
            assert single.hits[0, 0] == together.hits[row, 0], (text, row)


# --- the file around the expressions ------------------------------------------------------

_values = st.one_of(
    expressions,
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    st.booleans(),
    st.sampled_from(["decline", "review", "allow", "adjust", "CODE", "x" * 300]),
    st.lists(st.integers(0, 3), max_size=2),
)
_keys = st.sampled_from(
    [
        "id",
        "when",
        "action",
        "reason",
        "description",
        "adjust",
        "enabled",
        "__class__",
        "eval",
        "exec",
    ]
)


def _toml(rules: list[dict[str, Any]]) -> str:
    base = {"id": "r", "when": "amount > 1", "action": "review", "reason": "R", "description": "d"}
    out = []
    for i, overrides in enumerate(rules):
        rule = {**base, "id": f"r{i}", **overrides}
        out.append("[[rule]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in rule.items()]
    return "\n".join(out) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if value != value
            else ("inf" if value > 0 else "-inf")
            if abs(value) == float("inf")
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(st.dictionaries(_keys, _values, max_size=4), max_size=4))
def test_any_rule_file_is_rejected_with_a_rule_file_error_or_loads(
    rules: list[dict[str, Any]],
) -> None:
    text = _toml(rules)
    with CodeWatch():
        try:
            parse_rules(text, "fuzz.toml", RULE_FEATURES)
        except RuleFileError as error:
            assert error.source == "fuzz.toml" and error.reason
    assert seen == []


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_as_a_rule_file_is_rejected_or_loads(text: str) -> None:
    with CodeWatch(), contextlib.suppress(RuleFileError):
        parse_rules(text, "fuzz.toml", RULE_FEATURES)
    assert seen == []
