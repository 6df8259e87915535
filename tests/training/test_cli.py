"""``fraudstream train``, ``evaluate`` and ``models`` through typer's CliRunner, on a tiny
simulation and a temporary sqlite MLflow (named by a settings file, like any user)."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from features.definitions import DEFINITIONS_HASH
from fraudstream.cli import app
from fraudstream.settings import Settings, load_settings
from training.evaluate import VARIANTS
from training.registry import CHAMPION, RegistryConfig
from training.registry_mlflow import MlflowRegistry

TINY_TRAIN = [
    "train",
    "--simulate",
    "--small",
    "--cards", "300",
    "--terminals", "100",
    "--fraud-rate", "0.03",
    "--start", "2025-01-01",
    "--layers-until", "2025-01-12",
    "--ensemble-until", "2025-01-22",
    "--test-until", "2025-01-26",
]  # fmt: skip


def write_config(directory: Path, **sections: dict[str, str]) -> Path:
    """A settings file with a sqlite MLflow in ``directory`` plus any other sections."""
    directory.mkdir(parents=True, exist_ok=True)
    all_sections = {"mlflow": {"tracking_uri": f"sqlite:///{directory / 'mlflow.db'}"}}
    all_sections.update(sections)
    lines = []
    for name, values in all_sections.items():
        lines.append(f"[{name}]")
        lines += [f'{key} = "{value}"' for key, value in values.items()]
    path = directory / "fraudstream.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def registry_of(config: Path) -> MlflowRegistry:
    settings: Settings = load_settings(config, {})
    return MlflowRegistry(RegistryConfig.from_settings(settings.mlflow))


def invoker(config: Path) -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, ["--config", str(config), *args])

    return invoke


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Result]:
    """(settings file, kept bundle, result) of one tiny ``fraudstream train`` run."""
    directory = tmp_path_factory.mktemp("train-cli")
    config = write_config(directory)
    bundle = directory / "bundle"
    result = invoker(config)(*TINY_TRAIN, "--out", str(bundle))
    return config, bundle, result


def test_train_registers_one_version_with_metrics_plots_and_the_hash(
    trained: tuple[Path, Path, Result],
) -> None:
    config, bundle, result = trained
    assert result.exit_code == 0, result.output
    assert "version 1" in result.output
    registry = registry_of(config)
    (version,) = registry.list_versions()
    assert version.version == 1
    assert version.definitions_hash == DEFINITIONS_HASH
    for metric in ("auc_roc", "average_precision", "card_precision_at_100"):
        assert 0.0 <= version.metrics[metric] <= 1.0
    # Per-layer contributions on the test period, and what the test covered.
    assert 0.0 <= version.metrics["xgboost_alone.average_precision"] <= 1.0
    assert 0.0 <= version.metrics["without_gnn.average_precision"] <= 1.0
    assert version.metrics["test_transactions"] > 0
    assert version.params["ensemble_until"] == "2025-01-22"
    assert version.params["xgboost.n_estimators"] == "60"
    assert set(registry.plot_names(1)) == {
        "roc.png",
        "precision_recall.png",
        "score_histogram.png",
        "layer_contributions.png",
    }
    downloaded = registry.download(1, config.parent / "download")
    assert (downloaded / "engine.json").read_bytes() == (bundle / "engine.json").read_bytes()


def test_promotion_is_gated_through_the_cli(
    trained: tuple[Path, Path, Result], tmp_path: Path
) -> None:
    config, bundle, result = trained
    assert result.exit_code == 0, result.output
    registry = registry_of(config)
    worse = {
        **{k: v - 0.05 for k, v in registry.get(1).metrics.items() if k == "average_precision"},
        "auc_roc": 0.0,
        "card_precision_at_100": 0.0,
    }
    v2 = registry.register(bundle, worse, {}, DEFINITIONS_HASH)
    invoke = invoker(config)

    ok = invoke("models", "promote", "1", "--reason", "first engine", "--actor", "alice")
    assert ok.exit_code == 0, ok.output
    assert registry.champion() is not None and registry.champion().version == 1  # type: ignore[union-attr]

    refused = invoke("models", "promote", str(v2), "--reason", "try the new one")
    assert refused.exit_code == 1
    assert "refused" in refused.output and "average_precision" in refused.output
    assert registry.champion().version == 1  # type: ignore[union-attr]

    forced = invoke("models", "promote", str(v2), "--reason", "ops override", "--force")
    assert forced.exit_code == 0, forced.output
    champion = registry.champion()
    assert champion is not None and champion.version == v2
    assert champion.tags["promotion.by"] == getpass.getuser()
    assert champion.tags["promotion.forced"] == "true"

    listed = invoke("models", "list")
    assert listed.exit_code == 0, listed.output
    assert (
        CHAMPION in listed.output and DEFINITIONS_HASH.removeprefix("sha256:")[:12] in listed.output
    )

    back = invoke("models", "rollback", "--reason", "too many declines", "--actor", "bob")
    assert back.exit_code == 0, back.output
    champion = registry.champion()
    assert champion is not None and champion.version == 1
    assert champion.tags["promotion.by"] == "bob"
    assert champion.tags["promotion.reason"] == "too many declines"


def test_rollback_without_history_is_refused_not_a_traceback(tmp_path: Path) -> None:
    result = invoker(write_config(tmp_path))("models", "rollback", "--reason", "nothing")
    assert result.exit_code == 1
    assert "no previous champion" in result.output


def test_evaluate_simulated_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "evaluation.md"
    result = invoker(write_config(tmp_path))(
        "evaluate",
        "--protocol", "simulated",
        "--quick",
        "--threads", "1",
        "--cards", "300",
        "--terminals", "100",
        "--fraud-rate", "0.03",
        "--n-folds", "1",
        "--warmup-days", "2",
        "--train-days", "6",
        "--layers-days", "3",
        "--delay-days", "2",
        "--test-days", "3",
        "--cross-fit-blocks", "2",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for name in VARIANTS:
        assert f"| {name} |" in text
    assert "recall@1%FPR" in text and "--protocol simulated" in text
    assert "cross-fitted, 2 time blocks, forward" in text
    # The test rows' precision-recall curves, next to the tables and linked from them.
    png = tmp_path / "evaluation_pr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(evaluation_pr.png)" in text


def test_missing_handbook_data_says_where_to_get_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, data={"handbook_path": str(tmp_path / "nowhere.parquet")})
    invoke = invoker(config)
    for args in (("evaluate", "--protocol", "handbook"), ("train",)):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "nowhere.parquet" in result.output
        assert "shared/data/handbook/README.md" in result.output


def test_bad_options_are_refused(tmp_path: Path) -> None:
    invoke = invoker(write_config(tmp_path))
    assert invoke("evaluate", "--protocol", "kaggle").exit_code == 2
    assert invoke("evaluate", "--folds", "train").exit_code == 2
    assert invoke("evaluate", "--cross-fit-scheme", "sideways").exit_code == 2
    result = invoke(*TINY_TRAIN[:-2], "--test-until", "2025-01-20")
    assert result.exit_code == 2 and "in order" in result.output
