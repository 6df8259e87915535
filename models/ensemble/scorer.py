"""The meta-ensemble as a :class:`~models.base.Scorer`: its layers plus the meta model.

``score(batch)`` runs every layer directly (no breakers) and stacks them; the decision
engine (``models/decide.py``) instead runs each layer behind its breaker and calls
:meth:`EnsembleScorer.score_from` with what came back, which picks the fallback
stacker for any layer that did not.

Saved as one directory: ``meta.json``, ``ensemble.json`` (layer name -> kind) and each
layer saved by its own class under ``layers/<name>/``. The top manifest lists every
file, the layers' own manifests included, so one digest pins the whole ensemble and a
changed byte anywhere is refused before anything is parsed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from fraudstream.errors import UnsafeArtifactError
from fraudstream.wire.schemas import Reason
from models.artifacts import (
    MANIFEST_NAME,
    json_bytes,
    load_artifacts,
    parse_json,
    read_manifest,
    save_artifacts,
)
from models.base import Scorer, Scores, ScoringBatch
from models.ensemble.stacking import MetaModel, MetaParams, Stacked
from models.reasons import ReasonSettings, layer_explanations, merge_reasons
from models.rules import RulesScorer

KIND = "ensemble"
META_FILE = "meta.json"
ENSEMBLE_FILE = "ensemble.json"
LAYERS_DIR = "layers"

# Layer kinds an ensemble directory may hold -> where their class lives. Fixed here: a
# saved file names a kind from this table, never a module to import.
LAYER_CLASSES: dict[str, tuple[str, str]] = {
    "xgboost": ("models.xgb", "XGBoostScorer"),
    "iforest": ("models.iforest", "IsolationForestScorer"),
    "gnn": ("models.gnn", "GNNScorer"),
    "rules": ("models.rules.scorer", "RulesScorer"),
}


class EnsembleScorer:
    """Calibrated fraud probability from the learned layers and the rule flags."""

    name: ClassVar[str] = "ensemble"

    def __init__(
        self, layers: Mapping[str, Scorer], meta: MetaModel, rules: RulesScorer | None = None
    ) -> None:
        if set(layers) != set(meta.layers):
            raise ValueError(f"meta model combines {list(meta.layers)}, given {sorted(layers)}")
        if (rules is not None) != meta.uses_rules:
            raise ValueError("the meta model and the given rules disagree on using rule flags")
        for name, layer in layers.items():
            fitted_on = meta.layer_versions.get(name)
            if fitted_on is not None and fitted_on != layer.version:
                raise ValueError(
                    f"meta model was fitted on {name} {fitted_on}, given {layer.version}"
                )
        self.layers = dict(layers)
        self.meta = meta
        self.rules = rules

    @property
    def version(self) -> str:
        return self.meta.version

    @classmethod
    def fit(
        cls,
        layers: Mapping[str, Scorer],
        batch: ScoringBatch,
        labels: npt.ArrayLike,
        *,
        rules: RulesScorer | None = None,
        params: MetaParams | None = None,
    ) -> EnsembleScorer:
        """Fit the meta model on ``batch`` (rows in time order, from a period after the
        layers' training data) with its 0/1 ``labels``."""
        scores = {name: layer.score(batch) for name, layer in layers.items()}
        flags = rules.evaluate(batch).flags() if rules is not None else None
        versions = {name: layer.version for name, layer in layers.items()}
        meta = MetaModel.fit(
            scores, labels, rule_flags=flags, params=params, layer_versions=versions
        )
        return cls(layers, meta, rules)

    def layer_scores(self, batch: ScoringBatch) -> dict[str, Scores]:
        return {name: layer.score(batch) for name, layer in self.layers.items()}

    def score_from(
        self,
        layer_scores: Mapping[str, npt.ArrayLike],
        rule_flags: npt.ArrayLike | None,
        rows: int,
    ) -> Stacked:
        """Stack precomputed inputs. A layer absent from ``layer_scores`` (or NaN for a
        row), or ``rule_flags=None``, selects the stacker fitted without it."""
        return self.meta.stack(layer_scores, rule_flags, rows)

    def score(self, batch: ScoringBatch) -> Scores:
        flags = self.rules.evaluate(batch).flags() if self.rules is not None else None
        return self.meta.predict(self.layer_scores(batch), flags, len(batch))

    def explain(self, batch: ScoringBatch, scores: Scores, top: int = 3) -> list[list[Reason]]:
        """Reasons merged across the rules and layers (see ``models/reasons.py``)."""
        evaluation = self.rules.evaluate(batch) if self.rules is not None else None
        layer_scores = self.layer_scores(batch)
        stacked = self.score_from(
            layer_scores, evaluation.flags() if evaluation is not None else None, len(batch)
        )
        settings = ReasonSettings(max_reasons=top, explain_top=top)
        rows = np.arange(len(batch), dtype=np.int64)
        explanations = layer_explanations(
            batch, rows, layers=self.layers, layer_scores=layer_scores, stacked=stacked, top=top
        )
        return [
            merge_reasons(
                i,
                rules=evaluation,
                stacked=stacked,
                layer_scores=layer_scores,
                explanations=explanations,
                settings=settings,
            )
            for i in range(len(batch))
        ]

    # --- persistence --------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        files: dict[str, tuple[str, bytes]] = {}
        kinds: dict[str, str] = {}
        members: dict[str, Scorer] = dict(self.layers)
        if self.rules is not None:
            members["rules"] = self.rules
        for name, layer in sorted(members.items()):
            sub = directory / LAYERS_DIR / name
            layer.save(sub)
            manifest = read_manifest(sub, _kind_of(sub))
            kinds[name] = manifest.kind
            files[f"{LAYERS_DIR}/{name}/{MANIFEST_NAME}"] = (
                "json",
                (sub / MANIFEST_NAME).read_bytes(),
            )
            for entry in manifest.files:
                files[f"{LAYERS_DIR}/{name}/{entry.name}"] = (
                    entry.format,
                    (sub / entry.name).read_bytes(),
                )
        files[META_FILE] = ("json", json_bytes(self.meta.to_json()))
        files[ENSEMBLE_FILE] = ("json", json_bytes({"layers": kinds, "version": self.version}))
        save_artifacts(directory, KIND, files)

    @classmethod
    def load(cls, directory: Path) -> Self:
        files = load_artifacts(directory, KIND)  # every byte checked before any is parsed
        listing = parse_json(files[ENSEMBLE_FILE], ENSEMBLE_FILE)
        try:
            meta = MetaModel.from_json(parse_json(files[META_FILE], META_FILE))
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsafeArtifactError(
                str(directory / META_FILE), f"malformed meta model: {exc}"
            ) from exc
        layers: dict[str, Scorer] = {}
        rules: RulesScorer | None = None
        for name, kind in dict(listing["layers"]).items():
            if kind not in LAYER_CLASSES or not str(name).isidentifier():
                raise UnsafeArtifactError(
                    str(directory), f"unknown layer {name!r} of kind {kind!r}"
                )
            if f"{LAYERS_DIR}/{name}/{MANIFEST_NAME}" not in files:
                raise UnsafeArtifactError(str(directory), f"layer {name!r} is not in the manifest")
            layer = _layer_class(kind).load(directory / LAYERS_DIR / name)
            if isinstance(layer, RulesScorer):
                rules = layer
            else:
                layers[name] = layer
        loaded = cls(layers, meta, rules)
        if loaded.version != listing.get("version"):
            raise UnsafeArtifactError(str(directory), "meta model does not match its listing")
        return loaded


def _kind_of(directory: Path) -> str:
    doc: dict[str, Any] = parse_json((directory / MANIFEST_NAME).read_bytes(), MANIFEST_NAME)
    return str(doc["kind"])


def _layer_class(kind: str) -> Any:
    module, attribute = LAYER_CLASSES[kind]
    return getattr(importlib.import_module(module), attribute)
