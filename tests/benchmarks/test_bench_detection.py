"""The detection benchmark's command line, as the report will quote it."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_detection


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []

    def call(command: list[str], cwd: Path) -> int:
        assert cwd == bench_detection.HERE.parent
        seen.append(command)
        return 0

    monkeypatch.setattr(bench_detection.subprocess, "call", call)
    return seen


def test_a_report_inside_the_repository_is_named_relative_to_it(calls: list[list[str]]) -> None:
    out = bench_detection.HERE / "results" / "evaluation_simulated.md"
    assert bench_detection.evaluate("simulated", out, ["--quick"]) == 0
    command = calls[0]
    assert command[command.index("--out") + 1] == "benchmarks/results/evaluation_simulated.md"
    assert command[-1] == "--quick"


def test_a_report_elsewhere_keeps_its_absolute_path(calls: list[list[str]], tmp_path: Path) -> None:
    bench_detection.evaluate("handbook", tmp_path / "e.md", [])
    assert calls[0][calls[0].index("--out") + 1] == str(tmp_path / "e.md")
