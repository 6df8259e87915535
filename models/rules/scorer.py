"""The rule layer as a :class:`~models.base.Scorer`.

In the engine it reads its rules from a :class:`~models.rules.reload.RuleBook` (hot
reloaded) and its allow/deny lists from Redis; saved to disk it is the rule file text
plus its parameters, and loads with an empty in-memory list store (lists are live
operational data, not part of a model).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol, Self

from fraudstream.wire.schemas import Reason
from models.artifacts import json_bytes, load_artifacts, parse_json, save_artifacts
from models.base import Scores, ScoringBatch
from models.rules.evaluate import LAYER, RuleEvaluation, RulesSettings, evaluate
from models.rules.lists import InMemoryListStore, ListStore
from models.rules.loader import RuleSet, parse_rules

KIND = "rules"
RULES_FILE = "rules.toml"
PARAMS_FILE = "params.json"


class RuleSource(Protocol):
    """A fixed :class:`RuleSet` or a reloading :class:`RuleBook`."""

    def current(self) -> RuleSet: ...


class RulesScorer:
    """Scores rows by the rules that fire on them (see ``RuleEvaluation.scores``)."""

    name: ClassVar[str] = LAYER

    def __init__(
        self,
        source: RuleSource,
        lists: ListStore | None = None,
        settings: RulesSettings | None = None,
    ) -> None:
        self._source = source
        self._lists = lists
        self.settings = settings or RulesSettings()

    @property
    def rules(self) -> RuleSet:
        return self._source.current()

    @property
    def version(self) -> str:
        return self.rules.version

    def with_lists(self, lists: ListStore | None) -> RulesScorer:
        return RulesScorer(self._source, lists, self.settings)

    def evaluate(self, batch: ScoringBatch) -> RuleEvaluation:
        return evaluate(self._source.current(), batch, self._lists)

    def score(self, batch: ScoringBatch) -> Scores:
        return self.evaluate(batch).scores(self.settings)

    def explain(self, batch: ScoringBatch, scores: Scores, top: int = 3) -> list[list[Reason]]:
        """The rules that fired on each row, most decisive first."""
        evaluation = self.evaluate(batch)
        return [evaluation.reasons(i)[:top] for i in range(len(batch))]

    def save(self, directory: Path) -> None:
        rules = self.rules
        features = sorted(rules.features) if rules.features is not None else None
        params = {
            "version": rules.version,
            "features": features,
            "settings": self.settings.model_dump(mode="json"),
        }
        save_artifacts(
            directory,
            KIND,
            {
                RULES_FILE: ("toml", rules.text.encode("utf-8")),
                PARAMS_FILE: ("json", json_bytes(params)),
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        files = load_artifacts(directory, KIND)
        params = parse_json(files[PARAMS_FILE], PARAMS_FILE)
        features = params.get("features")
        rules = parse_rules(
            files[RULES_FILE].decode("utf-8"),
            str(directory / RULES_FILE),
            None if features is None else [str(f) for f in features],
        )
        settings = RulesSettings.model_validate(params.get("settings", {}))
        return cls(rules, InMemoryListStore(), settings)
