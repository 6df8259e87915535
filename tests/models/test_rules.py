"""The rule file: what it accepts, how it is evaluated, and what its actions mean."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings

from fraudstream.errors import RuleFileError
from fraudstream.settings import ScoringSettings
from fraudstream.wire.schemas import Transaction
from models.base import ScoringBatch
from models.rules import (
    InMemoryListStore,
    ListStoreUnavailable,
    RulesScorer,
    RulesSettings,
    evaluate,
    load_rule_file,
    parse_rules,
)
from tests.models.factories_rules import (
    RULE_FEATURES,
    batches,
    make_tx,
    rule_batch,
    rule_toml,
)

DEFAULT_RULES = ScoringSettings().rules_file


def rules(text: str, features: tuple[str, ...] | None = RULE_FEATURES) -> Any:
    return parse_rules(text, "rules.toml", features)


# --- the shipped rule file -----------------------------------------------------------------


def test_the_shipped_rule_file_loads_and_uses_only_transaction_fields_and_lists() -> None:
    ruleset = load_rule_file(DEFAULT_RULES, features=())
    assert len(ruleset.rules) >= 5
    assert {r.action for r in ruleset.rules} == {"decline", "allow", "review", "adjust"}


# --- errors name the file, the line and the key --------------------------------------------

GOOD = rule_toml("first", "amount > 100")


@pytest.mark.parametrize(
    ("text", "key", "line", "reason"),
    [
        (GOOD + "[[rule]]\nid = 'x'\nwhen = \n", "-", 10, "invalid TOML"),
        ("version = 2\n" + GOOD, "version", 1, "unknown top-level key"),
        (
            GOOD + '[[rule]]\nid = "second"\nwhen = "amount > 1"\naction = "review"\n'
            'description = "no reason"\n',
            "rule[1].reason",
            8,
            "Field required",
        ),
        (GOOD.replace('action = "review"', 'action = "block"'), "rule[0].action", 4, "decline"),
        (GOOD + GOOD, "rule[1].id", 9, "duplicate id"),
        (rule_toml("a", "amount > 1", "review", adjust=0.2), "rule[0].adjust", 7, "only allowed"),
        (rule_toml("a", "amount > 1", "adjust"), "rule[0].action", 4, "needs an adjust"),
        (rule_toml("a", "amount > 1", "adjust", adjust=1.5), "rule[0].adjust", 7, "less than"),
        (GOOD + rule_toml("b", "amount > 1 AND amout < 5"), "rule[1].when", 10, "'amout'"),
        (
            GOOD + rule_toml("b", "__import__('os').system('true')"),
            "rule[1].when",
            10,
            "not allowed",
        ),
        (GOOD + rule_toml("b", "amount"), "rule[1].when", 10, "true/false"),
        (GOOD + rule_toml("b", "country > 3"), "rule[1].when", 10, "cannot be evaluated"),
        (rule_toml("a", "amount > 1", colour='"red"'), "rule[0].colour", 7, "Extra inputs"),
        (
            rule_toml("a", "amount > 1").replace('reason = "A"', 'reason = "lower"'),
            "rule[0].reason",
            5,
            "pattern",
        ),
        (rule_toml("Bad-Id", "amount > 1"), "rule[0].id", 2, "pattern"),
        ("rule = 3\n", "rule", 1, "[[rule]] tables"),
    ],
)
def test_a_bad_file_is_rejected_with_file_line_key_and_reason(
    tmp_path: Path, text: str, key: str, line: int, reason: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RuleFileError) as caught:
        load_rule_file(path, RULE_FEATURES)
    error = caught.value
    assert (error.source, error.key, error.line) == (str(path), key, line)
    assert reason in error.reason
    assert str(error).startswith(f"{path}:{line}: {key}: ")


def test_an_unreadable_file_is_a_rule_file_error(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match="cannot read"):
        load_rule_file(tmp_path / "absent.toml")
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(RuleFileError, match="UTF-8"):
        load_rule_file(tmp_path / "latin1.toml")


def test_features_must_be_known_unless_the_feature_set_is_open() -> None:
    text = rule_toml("spike", "amount_ratio_30d >= 5 AND new_feature > 1")
    with pytest.raises(RuleFileError, match="new_feature"):
        rules(text)
    assert rules(text, features=None).columns == {"amount_ratio_30d", "new_feature"}


def test_an_empty_file_and_disabled_rules_fire_nothing() -> None:
    batch = rule_batch([make_tx(0, amount=5000.0)])
    assert rules("").rules == ()
    disabled = rules(rule_toml("big", "amount > 1", "decline", enabled="false"))
    assert disabled.rules == ()
    assert RulesScorer(disabled).score(batch).tolist() == [0.0]


# --- vectorised evaluation against a row-by-row reference ----------------------------------


def _and(*values: bool | None) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _or(*values: bool | None) -> bool | None:
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def _cmp(value: Any, op: Callable[[Any], bool]) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return op(value)


def _in(value: Any, options: set[str]) -> bool | None:
    return None if value is None else value in options


DENIED_CARD = "card_b"
# (condition, the same condition in Python with SQL's three-valued logic)
REFERENCE: list[tuple[str, Callable[[Transaction, dict[str, float]], bool | None]]] = [
    (
        "amount > 500 AND channel = 'ecom'",
        lambda t, f: _and(t.amount > 500, _cmp(t.channel, lambda c: c == "ecom")),
    ),
    (
        "country IN ('NG', 'RU') OR mcc = '7995'",
        lambda t, f: _or(_in(t.country, {"NG", "RU"}), _cmp(t.mcc, lambda m: m == "7995")),
    ),
    ("hour >= 23 OR hour < 5", lambda t, f: _or(_utc(t).hour >= 23, _utc(t).hour < 5)),
    (
        "weekday >= 6 AND amount BETWEEN 100 AND 200",
        lambda t, f: _and(_utc(t).isoweekday() >= 6, 100 <= t.amount <= 200),
    ),
    ("amount_ratio_30d >= 5", lambda t, f: _cmp(f["amount_ratio_30d"], lambda v: v >= 5)),
    (
        "coalesce(device_card_count_7d, 0) >= 3",
        lambda t, f: (
            (0.0 if math.isnan(f["device_card_count_7d"]) else f["device_card_count_7d"]) >= 3
        ),
    ),
    ("amount_ratio_30d IS NULL", lambda t, f: math.isnan(f["amount_ratio_30d"])),
    ("card_denylisted", lambda t, f: t.card_id == DENIED_CARD),
    ("NOT (channel = 'pos')", lambda t, f: _cmp(t.channel, lambda c: c != "pos")),
    (
        "lower(channel) LIKE 'e%' OR device_id IS NULL",
        lambda t, f: _or(_cmp(t.channel, lambda c: c.startswith("e")), t.device_id is None),
    ),
    (
        "CASE WHEN channel = 'atm' THEN amount > 150 ELSE amount > 2000 END",
        lambda t, f: t.amount > 150 if t.channel == "atm" else t.amount > 2000,
    ),
]


def _utc(t: Transaction) -> Any:
    return t.event_time.astimezone(UTC)


REFERENCE_RULES = "".join(rule_toml(f"r{i}", when) for i, (when, _) in enumerate(REFERENCE))


@settings(max_examples=60, deadline=None)
@given(batch=batches())
def test_vectorised_hits_match_a_row_by_row_reference(batch: ScoringBatch) -> None:
    lists = InMemoryListStore({"card_denylisted": [DENIED_CARD]})
    evaluation = evaluate(rules(REFERENCE_RULES), batch, lists)
    assert evaluation.hits.shape == (len(batch), len(REFERENCE))
    for row, tx in enumerate(batch.transactions):
        features = dict(zip(RULE_FEATURES, batch.features.values[row].tolist(), strict=True))
        expected = [reference(tx, features) is True for _, reference in REFERENCE]
        assert evaluation.hits[row].tolist() == expected, (row, tx)


# --- actions and their precedence ----------------------------------------------------------

PRECEDENCE_RULES = (
    rule_toml("deny", "card_denylisted", "decline")
    + rule_toml("allow", "card_allowlisted", "allow")
    + rule_toml("big", "amount >= 1000", "review")
    + rule_toml("night", "hour < 5", "adjust", adjust=0.25)
    + rule_toml("ecom", "channel = 'ecom'", "adjust", adjust=0.5)
)


@pytest.mark.parametrize(
    ("tx", "score", "decline", "allow", "review", "adjust"),
    [
        # denied and allowed: deny wins
        (make_tx(0, card_id="card_x", amount=5000.0), 1.0, True, False, False, 0.0),
        # allowed beats review and adjustments
        (make_tx(1, card_id="card_y", amount=5000.0, channel="ecom"), 0.0, False, True, False, 0.5),
        # review: at least the review score, adjustments on top if larger
        (make_tx(2, amount=5000.0), 0.7, False, False, True, 0.0),
        (
            make_tx(
                3, amount=5000.0, channel="ecom", event_time=make_tx(0).event_time.replace(hour=2)
            ),
            0.75,
            False,
            False,
            True,
            0.75,
        ),
        # adjustments add up, clipped to [0, 1]
        (make_tx(4, channel="ecom"), 0.5, False, False, False, 0.5),
        (make_tx(5), 0.0, False, False, False, 0.0),
    ],
)
def test_action_precedence(
    tx: Transaction, score: float, decline: bool, allow: bool, review: bool, adjust: float
) -> None:
    lists = InMemoryListStore(
        {"card_denylisted": ["card_x"], "card_allowlisted": ["card_x", "card_y"]}
    )
    scorer = RulesScorer(rules(PRECEDENCE_RULES), lists)
    evaluation = scorer.evaluate(rule_batch([tx]))
    assert evaluation.decline.tolist() == [decline]
    assert evaluation.allow.tolist() == [allow]
    assert evaluation.review.tolist() == [review]
    assert evaluation.adjustment.tolist() == pytest.approx([adjust])
    assert scorer.score(rule_batch([tx])).tolist() == pytest.approx([score])


def test_reasons_put_the_most_decisive_rule_first_and_flags_feed_the_ensemble() -> None:
    lists = InMemoryListStore({"card_denylisted": ["card_x"], "card_allowlisted": ["card_x"]})
    tx = make_tx(0, card_id="card_x", amount=5000.0, channel="ecom")
    evaluation = RulesScorer(rules(PRECEDENCE_RULES), lists).evaluate(rule_batch([tx]))
    assert [r.code for r in evaluation.reasons(0)] == ["DENY", "ALLOW", "BIG", "ECOM"]
    assert {r.layer for r in evaluation.reasons(0)} == {"rules"}
    assert evaluation.fired_ids(0) == ["deny", "allow", "big", "ecom"]
    assert evaluation.flags().tolist() == [[1.0, 1.0, 1.0, 0.5]]


def test_review_score_comes_from_settings() -> None:
    scorer = RulesScorer(rules(PRECEDENCE_RULES), settings=RulesSettings(review_score=0.55))
    assert scorer.score(rule_batch([make_tx(0, amount=5000.0)])).tolist() == [0.55]


# --- missing data and unavailable lists ----------------------------------------------------


def test_a_rule_on_a_missing_value_does_not_fire() -> None:
    ruleset = rules(rule_toml("spike", "amount_ratio_30d >= 5", "decline"))
    batch = rule_batch([make_tx(0), make_tx(1)], [[np.nan, 1.0], [7.0, 1.0]])
    assert RulesScorer(ruleset).score(batch).tolist() == [0.0, 1.0]
    # A feature the batch does not carry at all is missing too.
    absent = rule_batch([make_tx(0)], [[7.0]], names=("other_feature",))
    assert RulesScorer(ruleset).score(absent).tolist() == [0.0]


class _DownListStore(InMemoryListStore):
    def contains(self, lookups: Any) -> Any:
        raise ListStoreUnavailable("connection refused")


def test_unreadable_lists_silence_list_rules_and_are_reported() -> None:
    ruleset = rules(
        rule_toml("deny", "card_denylisted", "decline")
        + rule_toml("not_allowed", "NOT card_allowlisted", "review")
        + rule_toml("big", "amount > 100", "review")
    )
    evaluation = evaluate(ruleset, rule_batch([make_tx(0, amount=500.0)]), _DownListStore())
    assert not evaluation.lists_ok
    # Unknown is neither listed nor not listed: only the rule that needs no list fires.
    assert evaluation.hits.tolist() == [[False, False, True]]


def test_a_rule_that_fails_at_run_time_is_reported_and_the_others_still_fire() -> None:
    # Valid on the probe values, but a strict cast fails on this batch's merchant codes.
    ruleset = rules(
        rule_toml("numeric_mcc", "CAST(mcc AS INTEGER) > 3")
        + rule_toml("big", "amount > 100", "decline")
    )
    evaluation = evaluate(ruleset, rule_batch([make_tx(0, amount=500.0, mcc="x")]))
    assert [rule_id for rule_id, _ in evaluation.errors] == ["numeric_mcc"]
    assert evaluation.hits.tolist() == [[False, True]]


def test_rules_only_build_the_columns_they_read() -> None:
    ruleset = rules(rule_toml("big", "amount > 100") + rule_toml("dev", "device_denylisted"))
    assert ruleset.columns == {"amount", "device_denylisted"}


# --- persistence -------------------------------------------------------------------------


def test_saved_rules_load_with_the_same_version_and_an_empty_list_store(tmp_path: Path) -> None:
    lists = InMemoryListStore({"card_denylisted": ["card_a"]})
    scorer = RulesScorer(rules(PRECEDENCE_RULES), lists, RulesSettings(review_score=0.6))
    scorer.save(tmp_path)
    loaded = RulesScorer.load(tmp_path)
    assert loaded.version == scorer.version
    assert loaded.settings == scorer.settings
    batch = rule_batch([make_tx(0, card_id="card_a"), make_tx(1, amount=5000.0)])
    assert scorer.score(batch).tolist() == [1.0, 0.6]
    assert loaded.score(batch).tolist() == [0.0, 0.6]
    assert loaded.with_lists(lists).score(batch).tolist() == [1.0, 0.6]


# --- the language, by example ----------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        "amount > 100 AND country IN ('NG', 'RU')",
        "TRY_CAST(mcc AS INTEGER) BETWEEN 5960 AND 5969",
        "starts_with(ip, '10.') OR regexp_like(device_id, '^emu_')",
        "greatest(amount, 0) > least(amount_ratio_30d, 9) AND abs(latitude) > 60",
        "round(amount, 0) = 100 OR upper(channel) = 'ECOM'",
        "date_part('hour', event_time) >= 22",
        "event_time >= TIMESTAMP '2026-03-01 00:00:00'",
        "amount IS DISTINCT FROM 0 AND device_id IS NOT NULL",
        "2.5 / NULLIF(hour, 0) > 1",
        "TRUE",
    ],
)
def test_the_documented_constructs_are_accepted(when: str) -> None:
    assert len(rules(rule_toml("r", when)).rules) == 1


def test_a_condition_that_fails_on_ordinary_values_is_rejected_at_load() -> None:
    # 2.5 / hour divides by zero at midnight: caught on the probe rows, not in production.
    with pytest.raises(RuleFileError, match="division by zero"):
        rules(rule_toml("r", "2.5 / hour > 1"))


def test_a_constant_condition_applies_to_every_row() -> None:
    evaluation = evaluate(rules(rule_toml("all", "TRUE")), rule_batch([make_tx(0), make_tx(1)]))
    assert evaluation.hits.tolist() == [[True], [True]]
