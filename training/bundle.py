"""An engine bundle on disk: the ensemble (every layer and the meta model) plus
``engine.json`` (feature definitions hash, feature names, periods, row counts, metrics),
all listed in one manifest (:mod:`models.artifacts`), so one digest pins the whole
engine and a changed byte anywhere is refused before anything is parsed.

:func:`load_engine` turns a bundle into a :class:`models.decide.ScoringEngine`; it
refuses a bundle trained on other feature definitions than the running code's
(:class:`fraudstream.errors.DefinitionsMismatchError`) and says how to make one when
there is none (:class:`fraudstream.errors.EngineBundleMissing`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.definitions import DEFINITIONS_HASH, FEATURE_NAMES
from fraudstream.errors import DefinitionsMismatchError, EngineBundleError, EngineBundleMissing
from fraudstream.settings import Settings
from models.artifacts import (
    MANIFEST_NAME,
    json_bytes,
    load_artifacts,
    parse_json,
    read_manifest,
    save_artifacts,
)
from models.decide import ScoringEngine
from models.ensemble import EnsembleScorer
from models.ensemble.scorer import KIND as ENSEMBLE_KIND
from models.rules import RulesScorer

ENGINE_FILE = "engine.json"
ENGINE_FORMAT = 1


@dataclass(frozen=True)
class EngineInfo:
    """What ``engine.json`` records about a bundle."""

    version: str
    definitions_hash: str
    feature_names: tuple[str, ...]
    periods: dict[str, Any]
    rows: dict[str, int]
    metrics: dict[str, Any]
    # Free text: what the engine was trained on ("demo: simulator seed 7", a data path).
    trained_on: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "format": ENGINE_FORMAT,
            "version": self.version,
            "definitions_hash": self.definitions_hash,
            "feature_names": list(self.feature_names),
            "periods": self.periods,
            "rows": self.rows,
            "metrics": self.metrics,
            "trained_on": self.trained_on,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EngineInfo:
        return cls(
            version=str(doc["version"]),
            definitions_hash=str(doc["definitions_hash"]),
            feature_names=tuple(str(n) for n in doc["feature_names"]),
            periods=dict(doc["periods"]),
            rows={str(k): int(v) for k, v in dict(doc["rows"]).items()},
            metrics=dict(doc["metrics"]),
            trained_on=str(doc.get("trained_on", "")),
        )


@dataclass(frozen=True)
class TrainedEngine:
    bundle_dir: Path
    info: EngineInfo
    ensemble: EnsembleScorer

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.info.feature_names

    @property
    def definitions_hash(self) -> str:
        return self.info.definitions_hash

    @property
    def periods(self) -> dict[str, Any]:
        return self.info.periods


def save_bundle(ensemble: EnsembleScorer, info: EngineInfo, out_dir: Path) -> None:
    """The ensemble plus ``engine.json`` in one manifest, swapped into ``out_dir`` whole."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    ensemble.save(staging)
    manifest = read_manifest(staging, ENSEMBLE_KIND)
    files = {e.name: (e.format, (staging / e.name).read_bytes()) for e in manifest.files}
    files[ENGINE_FILE] = ("json", json_bytes(info.as_json()))
    save_artifacts(staging, ENSEMBLE_KIND, files)
    retired = out_dir.with_name(f".{out_dir.name}.retired-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def read_engine_info(bundle_dir: Path, *, check_definitions: bool = True) -> EngineInfo:
    """``engine.json`` of a bundle, digest-checked with every other file of it; refuses
    (unless told not to) a bundle trained on other feature definitions."""
    if not (bundle_dir / MANIFEST_NAME).is_file():
        raise EngineBundleMissing(bundle_dir)
    files = load_artifacts(bundle_dir, ENSEMBLE_KIND)
    if ENGINE_FILE not in files:
        raise EngineBundleError(bundle_dir, f"an ensemble without {ENGINE_FILE}")
    try:
        info = EngineInfo.from_json(parse_json(files[ENGINE_FILE], ENGINE_FILE))
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineBundleError(bundle_dir, f"malformed {ENGINE_FILE}: {exc}") from exc
    if check_definitions and info.definitions_hash != DEFINITIONS_HASH:
        raise DefinitionsMismatchError(DEFINITIONS_HASH, info.definitions_hash, bundle_dir)
    if check_definitions and info.feature_names != FEATURE_NAMES:
        raise EngineBundleError(bundle_dir, "its feature names differ from the definitions")
    return info


def load_bundle(bundle_dir: Path) -> TrainedEngine:
    info = read_engine_info(bundle_dir)
    ensemble = EnsembleScorer.load(bundle_dir)
    if ensemble.version != info.version:
        raise EngineBundleError(bundle_dir, f"{ENGINE_FILE} describes another ensemble")
    return TrainedEngine(bundle_dir, info, ensemble)


def load_engine(
    bundle_dir: Path,
    settings: Settings,
    *,
    rules: RulesScorer | None = None,
    **options: Any,
) -> ScoringEngine:
    """The decision engine of a saved bundle, with ``settings``' thresholds, deadline and
    breakers. ``rules`` (e.g. the hot-reloaded, list-backed rule layer) replaces the rules
    saved with it; ``options`` go to :class:`ScoringEngine` (clock, hooks)."""
    trained = load_bundle(bundle_dir)
    return ScoringEngine.from_ensemble(
        trained.ensemble,
        scoring=settings.scoring,
        breaker=settings.breaker,
        rules=rules,
        **options,
    )
