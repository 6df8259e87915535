from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.factories import train_small_engine


@pytest.fixture(scope="session")
def engine_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small engine trained on a small simulation, once per session (seconds)."""
    return train_small_engine(tmp_path_factory.mktemp("streams-engine") / "bundle").bundle_dir
