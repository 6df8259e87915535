"""Hot swap of the engines: follow the registry's ``champion`` and ``challenger`` aliases.

:class:`RegistryWatcher.poll` (run in a thread every ``models.poll_interval_s``) reads
both aliases; when one moved, it downloads the version (digest-checked by the
registry), loads it into a ready engine and *stages* it in the :class:`ModelSet`. The
scoring side takes staged models in with :meth:`ModelSet.swap_in` between two batches,
never while one is being decided, so every transaction is decided exactly once, by the
engine in force when its batch started. A version that cannot be used (other feature
definitions, a bad digest, a broken bundle) is refused, reported once, and the engine in
force keeps running; a registry that cannot be reached is retried at the next poll.

:class:`LiveModel` is a loaded engine plus the registry version it came from, which it
writes into each decision's ``model_version`` (``v<version>:<engine version>``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import msgspec

from features.definitions import DEFINITIONS_HASH
from fraudstream.errors import ModelError, VersionDefinitionsMismatch
from fraudstream.wire import Decision
from models.base import ScoringBatch
from models.decide import Deadline
from training.bundle import EngineInfo
from training.registry import CHALLENGER, CHAMPION, ModelVersion

MAX_VERSION_CHARS = 128  # Decision.model_version


class Engine(Protocol):
    """What a live model decides with (:class:`models.decide.ScoringEngine`)."""

    @property
    def model_version(self) -> str: ...

    def decide(
        self, batch: ScoringBatch, now: datetime, deadline: Deadline | None = None
    ) -> list[Decision]: ...


@dataclass(frozen=True, eq=False)
class LiveModel:
    """An engine ready to decide; ``version`` is its registry version (None: a bundle
    directory), ``source`` where it was loaded from (for logs), ``info`` its
    ``engine.json``."""

    engine: Engine
    version: int | None = None
    source: str = ""
    info: EngineInfo | None = None  # what engine.json says about it

    @property
    def prefix(self) -> str:
        return "" if self.version is None else f"v{self.version}:"

    @property
    def model_version(self) -> str:
        return (self.prefix + self.engine.model_version)[:MAX_VERSION_CHARS]

    def decide(self, batch: ScoringBatch, now: datetime, deadline: Deadline) -> list[Decision]:
        decisions = self.engine.decide(batch, now, deadline)
        if not self.prefix:
            return decisions
        return [self.label(d) for d in decisions]

    def label(self, decision: Decision) -> Decision:
        version = (self.prefix + decision.model_version)[:MAX_VERSION_CHARS]
        return msgspec.structs.replace(decision, model_version=version)


@dataclass(frozen=True)
class Swap:
    alias: str
    old: LiveModel | None
    new: LiveModel | None


class ModelSet:
    """The champion and challenger in force, and those staged to replace them.

    ``stage`` may be called from any thread; ``swap_in`` is called by the scoring side
    between batches and is the only place the models in force change.
    """

    def __init__(self, champion: LiveModel, challenger: LiveModel | None = None) -> None:
        self.champion = champion
        self.challenger = challenger
        self._staged: dict[str, LiveModel | None] = {}
        self._lock = threading.Lock()

    def stage(self, changes: Mapping[str, LiveModel | None]) -> None:
        """Models to take over at the next :meth:`swap_in` (all of them together).
        The champion can be replaced, never removed."""
        if changes.get(CHAMPION, self.champion) is None:
            raise ValueError("the champion can be replaced but not removed")
        with self._lock:
            self._staged.update(changes)

    def swap_in(self) -> list[Swap]:
        """Put the staged models in force; what changed."""
        if not self._staged:  # cheap check without the lock: nothing to do most batches
            return []
        with self._lock:
            staged, self._staged = self._staged, {}
        swaps: list[Swap] = []
        if CHAMPION in staged and staged[CHAMPION] is not None:
            new = staged[CHAMPION]
            assert new is not None
            swaps.append(Swap(CHAMPION, self.champion, new))
            self.champion = new
        if CHALLENGER in staged:
            swaps.append(Swap(CHALLENGER, self.challenger, staged[CHALLENGER]))
            self.challenger = staged[CHALLENGER]
        return swaps

    def versions(self) -> dict[str, int | None]:
        """Registry versions in force, staged ones taking precedence."""
        with self._lock:
            staged = dict(self._staged)
        out: dict[str, int | None] = {}
        for alias, model in ((CHAMPION, self.champion), (CHALLENGER, self.challenger)):
            chosen = staged.get(alias, model)
            out[alias] = None if chosen is None else chosen.version
        return out

    def find(self, version: int) -> LiveModel | None:
        """A model in force with registry ``version`` (reused on promotion)."""
        for model in (self.champion, self.challenger):
            if model is not None and model.version == version:
                return model
        return None


class AliasReader(Protocol):
    """The part of :class:`training.registry.ModelRegistry` the watcher reads."""

    def champion(self) -> ModelVersion | None: ...

    def challenger(self) -> ModelVersion | None: ...


class ModelDownloads(Protocol):
    def download(self, version: int, dst_dir: Path | None = None) -> Path: ...


class SwapHooks(Protocol):
    """What the watcher reports; the worker logs it (and counts it, once the metrics
    module has the counters)."""

    def model_staged(self, alias: str, version: int | None, source: str) -> None: ...

    def model_refused(self, alias: str, version: int, error: BaseException) -> None: ...

    def poll_failed(self, error: BaseException) -> None: ...


Loader = Callable[[ModelVersion], LiveModel]


class RegistryWatcher:
    """Follows the aliases of a registry into a :class:`ModelSet` (see the module doc).

    ``load`` turns a registry version into a live model and raises on a version that
    cannot be used: a :class:`fraudstream.errors.ModelError` is final for that version
    (it is not tried again until the alias moves), anything else is retried.
    """

    def __init__(
        self, registry: AliasReader, load: Loader, models: ModelSet, hooks: SwapHooks
    ) -> None:
        self._registry = registry
        self._load = load
        self._models = models
        self._hooks = hooks
        self._refused: dict[str, int] = {}
        self._lock = threading.Lock()

    def poll(self) -> dict[str, LiveModel | None]:
        """Check both aliases now and stage what moved; the staged changes."""
        if not self._lock.acquire(blocking=False):
            return {}  # a poll is still running (a slow download): skip this one
        try:
            return self._poll()
        finally:
            self._lock.release()

    def _poll(self) -> dict[str, LiveModel | None]:
        try:
            wanted = {
                CHAMPION: self._registry.champion(),
                CHALLENGER: self._registry.challenger(),
            }
        except Exception as exc:  # the registry is down: keep running, ask again later
            self._hooks.poll_failed(exc)
            return {}
        champion, challenger = wanted[CHAMPION], wanted[CHALLENGER]
        if (
            champion is not None
            and challenger is not None
            and champion.version == challenger.version
        ):
            # Mid-promotion (the champion alias moved, the challenger one is not yet
            # cleared), or a mistake: shadowing a model against itself measures nothing.
            wanted[CHALLENGER] = None
        in_force = self._models.versions()
        changes: dict[str, LiveModel | None] = {}
        for alias, target in wanted.items():
            version = None if target is None else target.version
            if version == in_force[alias] or (version is None and alias == CHAMPION):
                continue  # unchanged; a champion alias removed keeps the one running
            if version is not None and self._refused.get(alias) == version:
                continue
            if target is None:
                changes[alias] = None
                continue
            model = self._models.find(target.version)
            if model is None:
                try:
                    model = self._load(target)
                except ModelError as exc:
                    self._refused[alias] = target.version
                    self._hooks.model_refused(alias, target.version, exc)
                    continue
                except Exception as exc:  # e.g. the download failed: try again next poll
                    self._hooks.model_refused(alias, target.version, exc)
                    continue
            changes[alias] = model
        if changes:
            self._models.stage(changes)
            for alias, staged in changes.items():
                self._hooks.model_staged(
                    alias,
                    None if staged is None else staged.version,
                    staged.source if staged else "",
                )
        return changes


def check_definitions(model_name: str, target: ModelVersion, expected: str) -> None:
    if target.definitions_hash != expected:
        raise VersionDefinitionsMismatch(
            model_name, target.version, expected, target.definitions_hash
        )


def registry_loader(
    registry: ModelDownloads,
    build: Callable[[Path, int], LiveModel],
    *,
    model_name: str,
    download_dir: Path,
    expected_hash: str = DEFINITIONS_HASH,
) -> Loader:
    """Refuse a version tagged with other feature definitions before downloading it,
    download it (the registry checks the manifest digest) into a fresh directory under
    ``download_dir``, ``build`` it (which reads every file into memory and checks
    ``engine.json`` again) and remove the download."""

    def load(target: ModelVersion) -> LiveModel:
        check_definitions(model_name, target, expected_hash)
        download_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"v{target.version}-", dir=download_dir))
        try:
            return build(registry.download(target.version, scratch), target.version)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return load
