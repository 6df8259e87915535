"""Model registry: register trained bundles, promote them behind a metric gate, roll back.

Why a gate: promotion is what changes live decisions, so a candidate that is worse
than the champion on any gate metric (higher is better, absolute ``tolerance``) is
refused with a ``PromotionRefused`` naming the metric and both values, unless a person
forces it. Every promotion and rollback records who, when and why, on the model version
(latest) and in an append-only history (all), and a rollback replays that history, so
"go back to what ran before" never depends on someone remembering a version number.

Two implementations behind one ``ModelRegistry`` protocol: ``MlflowRegistry`` (MLflow's
model registry with registered model *aliases* ``champion``/``challenger``, not the
deprecated stages; local sqlite in development and tests) and ``InMemoryRegistry``, its
twin for unit tests of code that promotes. The gate, the history and the rollback rule
live once, in ``GatedRegistry``; the two differ only in where they keep things.

Bundles are copied as files, never pickled: a bundle holding a pickle is refused at
registration, and the sha256 of its ``manifest.json`` (``models.artifacts``) is pinned
on the version and checked again on download.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from fraudstream.errors import ArtifactDigestError, UnsafeArtifactError
from fraudstream.settings import MlflowSettings
from models.artifacts import MANIFEST_NAME, PICKLE_SUFFIXES, looks_like_pickle, sha256_hex
from training.errors import (
    InvalidAlias,
    MetricMissingError,
    ModelVersionNotFound,
    NothingToRollBack,
    PromotionRefused,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
BUNDLE_PATH = "bundle"  # artifact sub-directory of a run that holds the bundle
PLOTS_PATH = "plots"
HASH_TAG = "definitions_hash"
MANIFEST_TAG = "manifest_sha256"
_MAX_TEXT = 1000  # actor and reason are stored as tags; keep them well under tag limits

Clock = Callable[[], datetime]


class RegistryConfig(BaseModel):
    """What the registry needs; ``from_settings`` fills it from ``settings.mlflow``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str = "sqlite:///mlflow.db"
    registry_uri: str | None = None
    experiment: str = "fraudstream"
    model_name: str = Field(default="fraudstream-engine", pattern=r"^[A-Za-z0-9][\w.\-]{0,99}$")
    # Where run artefacts go; default: ``mlartifacts`` beside a sqlite database.
    artifact_root: Path | None = None
    # Higher is better for each; the candidate must not trail the champion on any.
    gate_metrics: tuple[str, ...] = ("average_precision", "card_precision_at_100", "auc_roc")
    promotion_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)

    @classmethod
    def from_settings(cls, mlflow: MlflowSettings, **extra: Any) -> RegistryConfig:
        return cls(
            tracking_uri=mlflow.tracking_uri,
            registry_uri=mlflow.registry_uri,
            experiment=mlflow.experiment,
            model_name=mlflow.model_name,
            **extra,
        )


@dataclass(frozen=True)
class ModelVersion:
    version: int
    definitions_hash: str
    metrics: Mapping[str, float]
    params: Mapping[str, str]
    tags: Mapping[str, str]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromotionRecord:
    action: Literal["promote", "rollback"]
    alias: str
    version: int
    previous_version: int | None  # who held the alias before
    actor: str
    reason: str
    at: datetime
    forced: bool = False

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "at": self.at.isoformat()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PromotionRecord:
        raw = json.loads(text)
        return cls(**{**raw, "at": datetime.fromisoformat(raw["at"])})


class ModelRegistry(Protocol):
    def register(
        self,
        bundle_dir: Path,
        metrics: Mapping[str, float],
        params: Mapping[str, object],
        definitions_hash: str,
        *,
        tags: Mapping[str, str] | None = None,
        plots: Sequence[Path] = (),
    ) -> int: ...
    def get(self, version: int) -> ModelVersion: ...
    def list_versions(self) -> list[ModelVersion]: ...
    def champion(self) -> ModelVersion | None: ...
    def challenger(self) -> ModelVersion | None: ...
    def promote(
        self,
        version: int,
        alias: str = CHAMPION,
        *,
        actor: str,
        reason: str,
        force: bool = False,
        tolerance: float | None = None,
    ) -> PromotionRecord: ...
    def rollback(self, *, actor: str, reason: str) -> PromotionRecord: ...
    def history(self) -> list[PromotionRecord]: ...
    def download(self, version: int, dst_dir: Path | None = None) -> Path: ...
    def plot_names(self, version: int) -> list[str]: ...


# --- pure rules ----------------------------------------------------------------------


def check_gate(
    candidate: ModelVersion, champion: ModelVersion, metrics: Sequence[str], tolerance: float
) -> None:
    """Raise unless ``candidate`` is within ``tolerance`` of ``champion`` on every metric.

    A metric the champion never logged cannot be compared and is skipped; one the
    champion has but the candidate lacks is a ``MetricMissingError``.
    """
    for name in metrics:
        if name not in champion.metrics:
            continue
        if name not in candidate.metrics:
            raise MetricMissingError(candidate.version, name)
        ours, theirs = candidate.metrics[name], champion.metrics[name]
        if ours < theirs - tolerance:
            raise PromotionRefused(
                name,
                champion_version=champion.version,
                champion_value=theirs,
                candidate_version=candidate.version,
                candidate_value=ours,
                tolerance=tolerance,
            )


def champion_lineage(history: Sequence[PromotionRecord]) -> list[int]:
    """Champions in the order they took over, rolled-back ones popped: the last is live."""
    stack: list[int] = []
    for record in history:
        if record.alias != CHAMPION:
            continue
        if record.action == "rollback":
            stack.pop()
        elif not stack or stack[-1] != record.version:
            stack.append(record.version)
    return stack


def bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    """Every file of a bundle by relative path; refuses pickles, like ``models.artifacts``."""
    if not (bundle_dir / MANIFEST_NAME).is_file():
        raise UnsafeArtifactError(str(bundle_dir), f"no {MANIFEST_NAME}: not a model bundle")
    files: dict[str, bytes] = {}
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_symlink():
            raise UnsafeArtifactError(str(path), "links are not copied into the registry")
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix.lower() in PICKLE_SUFFIXES or looks_like_pickle(data):
            raise UnsafeArtifactError(str(path), "pickled artefacts are never registered")
        files[path.relative_to(bundle_dir).as_posix()] = data
    return files


def _check_text(name: str, value: str) -> None:
    if not value.strip() or len(value) > _MAX_TEXT:
        raise ValueError(f"{name} must be non-empty and at most {_MAX_TEXT} characters")


def clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    out = {k: float(v) for k, v in metrics.items()}
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"metrics must be finite: {', '.join(sorted(bad))}")
    return out


def str_params(params: Mapping[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in params.items()}


# --- the shared logic ----------------------------------------------------------------


class GatedRegistry(ABC):
    """Gate, audit trail and rollback on top of a few storage primitives."""

    def __init__(self, config: RegistryConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or (lambda: datetime.now(UTC))

    @abstractmethod
    def get(self, version: int) -> ModelVersion: ...
    @abstractmethod
    def history(self) -> list[PromotionRecord]: ...
    @abstractmethod
    def _alias_target(self, alias: str) -> int | None: ...
    @abstractmethod
    def _set_alias(self, alias: str, version: int) -> None: ...
    @abstractmethod
    def _delete_alias(self, alias: str) -> None: ...
    @abstractmethod
    def _tag_version(self, version: int, tags: Mapping[str, str]) -> None: ...
    @abstractmethod
    def _append_history(self, record: PromotionRecord) -> None: ...

    def _holder(self, alias: str) -> ModelVersion | None:
        version = self._alias_target(alias)
        return None if version is None else self.get(version)

    def champion(self) -> ModelVersion | None:
        return self._holder(CHAMPION)

    def challenger(self) -> ModelVersion | None:
        return self._holder(CHALLENGER)

    def promote(
        self,
        version: int,
        alias: str = CHAMPION,
        *,
        actor: str,
        reason: str,
        force: bool = False,
        tolerance: float | None = None,
    ) -> PromotionRecord:
        """Point ``alias`` at ``version``. Only ``champion`` is gated: a challenger runs in
        shadow, and may well be worse; that is what shadowing it is for.

        Promoting the challenger to champion also clears the challenger alias.
        Re-promoting the current holder changes nothing and records nothing.
        """
        if alias not in ALIASES:
            raise InvalidAlias(alias, f"use one of {', '.join(ALIASES)}")
        _check_text("actor", actor)
        _check_text("reason", reason)
        candidate = self.get(version)
        previous = self._alias_target(alias)
        record = PromotionRecord(
            "promote", alias, version, previous, actor, reason, self._clock(), force
        )
        if previous == version:
            return record
        if alias == CHAMPION and previous is not None and not force:
            tol = self.config.promotion_tolerance if tolerance is None else tolerance
            if not 0.0 <= tol <= 1.0:
                raise ValueError(f"tolerance must be within [0, 1], got {tol}")
            check_gate(candidate, self.get(previous), self.config.gate_metrics, tol)
        self._apply(record)
        if alias == CHAMPION and self._alias_target(CHALLENGER) == version:
            self._delete_alias(CHALLENGER)
        return record

    def rollback(self, *, actor: str, reason: str) -> PromotionRecord:
        """Make the champion before the current one champion again (no gate: going back
        to what ran before is the safe move)."""
        _check_text("actor", actor)
        _check_text("reason", reason)
        lineage = champion_lineage(self.history())
        if len(lineage) < 2:
            raise NothingToRollBack(self.config.model_name)
        record = PromotionRecord(
            "rollback", CHAMPION, lineage[-2], lineage[-1], actor, reason, self._clock(), True
        )
        self._apply(record)
        return record

    def _apply(self, record: PromotionRecord) -> None:
        self._set_alias(record.alias, record.version)
        self._tag_version(
            record.version,
            {
                "promotion.action": record.action,
                "promotion.alias": record.alias,
                "promotion.by": record.actor,
                "promotion.at": record.at.isoformat(),
                "promotion.reason": record.reason,
                "promotion.forced": str(record.forced).lower(),
                "promotion.previous_version": str(record.previous_version or ""),
            },
        )
        self._append_history(record)


# --- in-memory twin ------------------------------------------------------------------


@dataclass
class _Stored:
    info: ModelVersion
    files: dict[str, bytes]
    tags: dict[str, str] = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict)


class InMemoryRegistry(GatedRegistry):
    """The MLflow registry's twin: same rules, dictionaries instead of a database."""

    def __init__(self, config: RegistryConfig | None = None, clock: Clock | None = None) -> None:
        super().__init__(config or RegistryConfig(), clock)
        self._versions: dict[int, _Stored] = {}
        self._aliases: dict[str, int] = {}
        self._history: list[PromotionRecord] = []

    def register(
        self,
        bundle_dir: Path,
        metrics: Mapping[str, float],
        params: Mapping[str, object],
        definitions_hash: str,
        *,
        tags: Mapping[str, str] | None = None,
        plots: Sequence[Path] = (),
    ) -> int:
        files = bundle_files(bundle_dir)
        version = len(self._versions) + 1
        all_tags = {**(tags or {}), HASH_TAG: definitions_hash}
        all_tags[MANIFEST_TAG] = sha256_hex(files[MANIFEST_NAME])
        info = ModelVersion(
            version, definitions_hash, clean_metrics(metrics), str_params(params), {}
        )
        plot_bytes = {plot.name: plot.read_bytes() for plot in plots}
        self._versions[version] = _Stored(info, files, all_tags, plot_bytes)
        return version

    def _stored(self, version: int) -> _Stored:
        stored = self._versions.get(version)
        if stored is None:
            raise ModelVersionNotFound(self.config.model_name, version)
        return stored

    def plot_names(self, version: int) -> list[str]:
        stored = self._stored(version)
        return sorted(stored.plots)

    def get(self, version: int) -> ModelVersion:
        stored = self._stored(version)
        aliases = tuple(sorted(a for a, v in self._aliases.items() if v == version))
        return replace(stored.info, tags=dict(stored.tags), aliases=aliases)

    def list_versions(self) -> list[ModelVersion]:
        return [self.get(v) for v in sorted(self._versions)]

    def history(self) -> list[PromotionRecord]:
        return list(self._history)

    def download(self, version: int, dst_dir: Path | None = None) -> Path:
        stored = self._stored(version)
        target = Path(dst_dir or tempfile.mkdtemp(prefix="fraudstream-model-")) / BUNDLE_PATH
        for rel, data in stored.files.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
        verify_download(target, stored.tags.get(MANIFEST_TAG))
        return target

    def _alias_target(self, alias: str) -> int | None:
        return self._aliases.get(alias)

    def _set_alias(self, alias: str, version: int) -> None:
        self._aliases[alias] = version

    def _delete_alias(self, alias: str) -> None:
        self._aliases.pop(alias, None)

    def _tag_version(self, version: int, tags: Mapping[str, str]) -> None:
        self._versions[version].tags.update(tags)

    def _append_history(self, record: PromotionRecord) -> None:
        self._history.append(record)


def verify_download(bundle: Path, expected: str | None) -> None:
    """Refuse a downloaded bundle whose manifest is not the one registered."""
    if expected is None:
        return
    actual = sha256_hex((bundle / MANIFEST_NAME).read_bytes())
    if actual != expected:
        shutil.rmtree(bundle, ignore_errors=True)
        raise ArtifactDigestError(str(bundle / MANIFEST_NAME), expected, actual)
