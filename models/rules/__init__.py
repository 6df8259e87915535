"""The rule layer: ops-edited SQL conditions with actions, allow/deny lists, hot reload.

- :mod:`models.rules.language`: the safe expression language (whitelisted polars SQL);
- :mod:`models.rules.loader`: the TOML rule file -> a checked :class:`RuleSet`;
- :mod:`models.rules.reload`: :class:`RuleBook`, reloading the file without restart;
- :mod:`models.rules.lists`: allow/deny lists in Redis sets (and an in-memory twin);
- :mod:`models.rules.evaluate`: vectorised evaluation and action precedence;
- :mod:`models.rules.scorer`: :class:`RulesScorer`, the layer behind the Scorer protocol.
"""

from models.rules.evaluate import FLAG_NAMES, RuleEvaluation, RulesSettings, evaluate
from models.rules.language import ExpressionRejected, compile_expression, known_columns
from models.rules.lists import InMemoryListStore, ListStore, ListStoreUnavailable, RedisListStore
from models.rules.loader import Rule, RuleSet, load_rule_file, parse_rules
from models.rules.reload import RuleBook
from models.rules.scorer import RuleSource, RulesScorer

__all__ = [
    "FLAG_NAMES",
    "ExpressionRejected",
    "InMemoryListStore",
    "ListStore",
    "ListStoreUnavailable",
    "RedisListStore",
    "Rule",
    "RuleBook",
    "RuleEvaluation",
    "RuleSet",
    "RuleSource",
    "RulesScorer",
    "RulesSettings",
    "compile_expression",
    "evaluate",
    "known_columns",
    "load_rule_file",
    "parse_rules",
]
