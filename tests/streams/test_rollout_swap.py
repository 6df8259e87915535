"""Hot swap with fake engines and the in-memory registry: models change between batches,
a version that cannot be used is refused and the old one keeps running."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from features.definitions import DEFINITIONS_HASH
from fraudstream.errors import (
    ArtifactDigestError,
    DefinitionsMismatchError,
    VersionDefinitionsMismatch,
)
from models.artifacts import MANIFEST_NAME, save_artifacts
from streams.hotswap import LiveModel, ModelSet, RegistryWatcher, registry_loader
from tests.streams.rollout_factories import (
    T0,
    FakeEngine,
    Reports,
    make_decider,
    make_transactions,
    shadow_of,
)
from training.registry import CHALLENGER, ModelVersion
from training.registry import InMemoryRegistry as Registry

METRICS = {"average_precision": 0.5, "card_precision_at_100": 0.2, "auc_roc": 0.8}


# --- hot swap ------------------------------------------------------------------------


async def test_a_staged_champion_takes_over_between_batches_never_during_one() -> None:
    gate = threading.Event()
    old, new = FakeEngine("old", gate=gate), FakeEngine("new")
    reports = Reports()
    decider = make_decider(old, reports=reports)
    first = asyncio.ensure_future(decider.decide(make_transactions(30), T0))
    await asyncio.to_thread(old.entered.wait, 30)
    decider.models.stage({"champion": LiveModel(new, 2)})  # while the batch is decided
    gate.set()
    first_live = await first
    second_live = await decider.decide(make_transactions(30, start=30), T0)
    assert {d.model_version for d in first_live} == {"old"}
    assert {d.model_version for d in second_live} == {"v2:new"}
    every = [d.transaction_id for d in first_live + second_live]
    assert len(every) == len(set(every)) == 60  # none dropped, none decided twice
    assert [(s.alias, s.new.version if s.new else None) for s in reports.swaps] == [("champion", 2)]


def test_the_champion_cannot_be_removed() -> None:
    models = ModelSet(LiveModel(FakeEngine("a")))
    with pytest.raises(ValueError, match="champion"):
        models.stage({"champion": None})


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[[str], Path]:
    """``make_bundle(name)``: a registrable directory whose fake engine is ``name``."""

    def build(name: str) -> Path:
        directory = tmp_path / "bundles" / name
        save_artifacts(
            directory, "engine", {"engine.json": ("json", f'{{"name": "{name}"}}'.encode())}
        )
        return directory

    return build


class FakeBuild:
    """Loads a downloaded fake bundle (``engine.json`` holds the name); a name starting
    with ``stale`` fails like a bundle trained on other definitions."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def __call__(self, bundle_dir: Path, version: int | None) -> LiveModel:
        name = str(json.loads((bundle_dir / "engine.json").read_text())["name"])
        if name.startswith("stale"):
            raise DefinitionsMismatchError(DEFINITIONS_HASH, "0ld", bundle_dir)
        self.loaded.append(version or 0)
        return LiveModel(FakeEngine(name), version, str(bundle_dir))


class Setup:
    def __init__(self, tmp_path: Path, make_bundle: Callable[[str], Path]) -> None:
        self.registry = Registry()
        self.make_bundle = make_bundle
        self.build = FakeBuild()
        self.reports = Reports()
        self.load = registry_loader(
            self.registry, self.build, model_name="m", download_dir=tmp_path / "dl"
        )
        self.add_version("alpha", promote=True)
        champion = self.registry.champion()
        assert champion is not None
        self.models = ModelSet(self.load(champion))
        self.watcher = RegistryWatcher(self.registry, self.load, self.models, self.reports)
        self.decider = make_decider(self.models.champion, reports=self.reports)
        self.decider.models = self.models

    def add_version(
        self, name: str, alias: str | None = None, *, promote: bool = False, hash_: str = ""
    ) -> int:
        version = self.registry.register(
            self.make_bundle(name), METRICS, {}, hash_ or DEFINITIONS_HASH
        )
        if promote or alias:
            self.registry.promote(
                version, alias or "champion", actor="test", reason="test", force=True
            )
        return version

    async def versions_live(self, n: int = 5) -> set[str]:
        return {d.model_version for d in await self.decider.decide(make_transactions(n), T0)}


@pytest.fixture
def setup(tmp_path: Path, make_bundle: Callable[[str], Path]) -> Setup:
    return Setup(tmp_path, make_bundle)


async def test_a_promotion_is_followed_without_restart(setup: Setup) -> None:
    assert await setup.versions_live() == {"v1:alpha"}
    setup.add_version("beta", promote=True)
    assert await setup.versions_live() == {"v1:alpha"}  # not polled yet
    staged = setup.watcher.poll()
    assert staged["champion"] is not None and staged["champion"].version == 2
    assert await setup.versions_live() == {"v2:beta"}
    assert setup.watcher.poll() == {}  # nothing moved since
    assert setup.reports.staged == [("champion", 2)]


async def test_a_version_on_other_feature_definitions_is_refused_and_the_old_keeps_running(
    setup: Setup,
) -> None:
    setup.add_version("gamma", promote=True, hash_="feedface")
    assert setup.watcher.poll() == {}
    assert await setup.versions_live() == {"v1:alpha"}
    ((alias, version, error),) = setup.reports.refused
    assert (alias, version) == ("champion", 2)
    assert isinstance(error, VersionDefinitionsMismatch)
    assert (error.expected, error.found) == (DEFINITIONS_HASH, "feedface")
    assert DEFINITIONS_HASH in str(error) and "feedface" in str(error)
    assert setup.build.loaded == [1]  # never downloaded nor built
    setup.watcher.poll()
    assert len(setup.reports.refused) == 1  # reported once, not retried every poll


async def test_a_bundle_whose_engine_json_disagrees_is_refused(setup: Setup) -> None:
    setup.add_version("stale-delta", promote=True)
    setup.watcher.poll()
    assert await setup.versions_live() == {"v1:alpha"}
    assert isinstance(setup.reports.refused[0][2], DefinitionsMismatchError)


async def test_a_download_with_a_bad_digest_is_refused(setup: Setup) -> None:
    version = setup.add_version("epsilon", promote=True)
    setup.registry._versions[version].files[MANIFEST_NAME] = b'{"kind": "swapped"}'
    setup.watcher.poll()
    assert await setup.versions_live() == {"v1:alpha"}
    assert isinstance(setup.reports.refused[0][2], ArtifactDigestError)
    # Moving the alias on again is followed as usual.
    setup.add_version("zeta", promote=True)
    setup.watcher.poll()
    assert await setup.versions_live() == {"v3:zeta"}


async def test_a_challenger_is_followed_and_promoting_it_reuses_the_loaded_engine(
    setup: Setup,
) -> None:
    version = setup.add_version("beta", CHALLENGER)
    setup.watcher.poll()
    await setup.decider.decide(make_transactions(5), T0)
    assert {d.model_version for d in shadow_of(setup.decider)} == {"v2:beta"}
    setup.registry.promote(version, actor="test", reason="won", force=True)
    setup.watcher.poll()  # champion -> 2, challenger alias cleared by the promotion
    assert await setup.versions_live() == {"v2:beta"}
    assert setup.decider.take_shadow() == []
    assert setup.build.loaded == [1, 2]  # version 2 was loaded once
    assert setup.reports.staged == [("challenger", 2), ("champion", 2), ("challenger", None)]


async def test_an_unreachable_registry_changes_nothing(setup: Setup) -> None:
    class Down:
        def champion(self) -> ModelVersion | None:
            raise ConnectionError("registry down")

        def challenger(self) -> ModelVersion | None:
            raise ConnectionError("registry down")

    watcher = RegistryWatcher(Down(), setup.load, setup.models, setup.reports)
    assert watcher.poll() == {}
    assert [str(e) for e in setup.reports.poll_errors] == ["registry down"]
    assert await setup.versions_live() == {"v1:alpha"}


def test_a_failed_download_is_tried_again_at_the_next_poll(setup: Setup) -> None:
    setup.add_version("beta", promote=True)
    calls: list[Any] = []
    real = setup.registry.download

    def flaky(version: int, dst_dir: Path | None = None) -> Path:
        calls.append(version)
        if len(calls) == 1:
            raise OSError("connection reset")
        return real(version, dst_dir)

    setup.registry.download = flaky  # type: ignore[method-assign]
    assert setup.watcher.poll() == {}
    assert setup.watcher.poll()["champion"] is not None
    assert calls == [2, 2]


async def test_a_challenger_equal_to_the_champion_is_no_challenger(setup: Setup) -> None:
    setup.registry.promote(1, CHALLENGER, actor="test", reason="oops")
    assert setup.watcher.poll() == {}
    await setup.decider.decide(make_transactions(5), T0)
    assert setup.decider.take_shadow() == []
