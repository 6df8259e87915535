"""The demo's engine step: use a trained engine, train one when there is none, and
retrain only its own when the feature definitions moved on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fraudstream.errors import DefinitionsMismatchError
from models.artifacts import load_artifacts, read_manifest, save_artifacts
from streams import demo_engine
from tests.training.factories import engine_settings
from training.engine import ENGINE_FILE


class TrainingSpy:
    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, data: Any, bundle_dir: Path, *, seed: int, progress: Any = None) -> Any:
        self.calls.append(bundle_dir)
        return type("Info", (), {"version": "v", "metrics": {}})()


def restamp(bundle: Path, **changes: Any) -> None:
    files = load_artifacts(bundle, "ensemble")
    doc = json.loads(files[ENGINE_FILE]) | changes
    formats = {e.name: e.format for e in read_manifest(bundle, "ensemble").files}
    files[ENGINE_FILE] = json.dumps(doc).encode()
    save_artifacts(bundle, "ensemble", {n: (formats[n], b) for n, b in files.items()})


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> TrainingSpy:
    spy = TrainingSpy()
    monkeypatch.setattr(demo_engine, "train_demo_engine", spy)
    monkeypatch.setattr(demo_engine, "register_demo_engine", lambda *args: None)
    return spy


def ensure(bundle: Path) -> str:
    console = Console(record=True, width=200)
    demo_engine.ensure_engine(engine_settings(bundle), None, 7, console)  # type: ignore[arg-type]
    return console.export_text()


def test_a_trained_engine_is_used_as_it_is(engine_bundle: Path, spy: TrainingSpy) -> None:
    assert "engine meta-" in ensure(engine_bundle)
    assert spy.calls == []


def test_without_an_engine_a_demo_engine_is_trained(tmp_path: Path, spy: TrainingSpy) -> None:
    said = ensure(tmp_path / "engine")
    assert spy.calls == [tmp_path / "engine"]
    assert "no trained engine" in said


def test_only_the_demo_engine_is_retrained_when_definitions_change(
    engine_bundle: Path, tmp_path: Path, spy: TrainingSpy
) -> None:
    ours = tmp_path / "ours"
    shutil.copytree(engine_bundle, ours)
    restamp(ours, definitions_hash="old", trained_on=f"{demo_engine.DEMO_PREFIX} simulator seed 7")
    assert "out of date" in ensure(ours)
    assert spy.calls == [ours]

    theirs = tmp_path / "theirs"
    shutil.copytree(engine_bundle, theirs)
    restamp(theirs, definitions_hash="old", trained_on="handbook 2018-04-01..2018-05-01")
    with pytest.raises(DefinitionsMismatchError):
        ensure(theirs)
    assert spy.calls == [ours]


def test_a_trained_demo_engine_becomes_the_registry_champion(
    engine_bundle: Path, tmp_path: Path
) -> None:
    from training.bundle import read_engine_info
    from training.registry import RegistryConfig
    from training.registry_mlflow import MlflowRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = engine_settings(engine_bundle, FRAUDSTREAM__MLFLOW__TRACKING_URI=uri)
    info = read_engine_info(engine_bundle)
    console = Console(record=True, width=200)
    demo_engine.register_demo_engine(settings, info, console)
    assert "@champion" in console.export_text()
    registry = MlflowRegistry(RegistryConfig.from_settings(settings.mlflow))
    champion = registry.champion()
    assert champion is not None
    assert champion.definitions_hash == info.definitions_hash
