"""The model registry: every behaviour runs against real MLflow (sqlite in tmp_path) and
against the in-memory twin, through the same test functions (``make_registry``)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fraudstream.errors import ArtifactDigestError, UnsafeArtifactError
from fraudstream.settings import Settings
from models.artifacts import MANIFEST_NAME, save_artifacts
from training.errors import (
    InvalidAlias,
    MetricMissingError,
    ModelVersionNotFound,
    NothingToRollBack,
    PromotionRefused,
)
from training.registry import (
    CHALLENGER,
    CHAMPION,
    HASH_TAG,
    InMemoryRegistry,
    ModelRegistry,
    ModelVersion,
    PromotionRecord,
    RegistryConfig,
    champion_lineage,
    check_gate,
)
from training.registry_mlflow import MlflowRegistry

GOOD = {"average_precision": 0.68, "card_precision_at_100": 0.30, "auc_roc": 0.87}
WORSE_AP = {**GOOD, "average_precision": 0.60}
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow database, copied per test (creating one takes seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(params=["mlflow", "memory"])
def make_registry(
    request: pytest.FixtureRequest, tmp_path: Path, mlflow_db_template: Path
) -> Callable[..., ModelRegistry]:
    """``make_registry(**config)``: a registry with a clock ticking one minute a call.
    Two calls in one test share one store (for MLflow, one database)."""
    clock_ticks = itertools.count()

    def clock() -> datetime:
        return T0 + timedelta(minutes=next(clock_ticks))

    def build(**config: Any) -> ModelRegistry:
        if request.param == "memory":
            return InMemoryRegistry(RegistryConfig(**config), clock)
        db = tmp_path / "mlflow.db"
        if not db.exists():
            shutil.copy(mlflow_db_template, db)
        cfg = RegistryConfig(tracking_uri=f"sqlite:///{db}", **config)
        return MlflowRegistry(cfg, clock)

    return build


@pytest.fixture
def registry(make_registry: Callable[..., ModelRegistry]) -> ModelRegistry:
    return make_registry()


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., Path]:
    """``make_bundle(name)``: a real engine-like bundle (files + manifest.json)."""
    counter = itertools.count()

    def build(name: str = "engine") -> Path:
        directory = tmp_path / f"bundles/{name}-{next(counter)}"
        save_artifacts(
            directory,
            "engine",
            {
                "engine.json": ("json", f'{{"name": "{name}"}}'.encode()),
                "layers/rules.toml": ("toml", b"[rules]\n"),
            },
        )
        return directory

    return build


@pytest.fixture
def register(registry: ModelRegistry, make_bundle: Callable[..., Path]) -> Callable[..., int]:
    def build(metrics: dict[str, float] | None = None, **kwargs: Any) -> int:
        return registry.register(
            make_bundle(),
            GOOD if metrics is None else metrics,
            {"max_depth": 3, "learning_rate": 0.3},
            "defs-abc123",
            **kwargs,
        )

    return build


def files_of(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file()
    }


# --- registering and reading ---------------------------------------------------------


def test_register_records_metrics_params_hash_and_tags(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    first = register(tags={"trained_by": "ci"})
    second = register(WORSE_AP)
    assert (first, second) == (1, 2)
    versions = registry.list_versions()
    assert [v.version for v in versions] == [1, 2]
    one = versions[0]
    assert one.metrics == GOOD
    assert one.params == {"max_depth": "3", "learning_rate": "0.3"}
    assert one.definitions_hash == "defs-abc123"
    assert one.tags[HASH_TAG] == "defs-abc123"
    assert one.tags["trained_by"] == "ci"
    assert one.aliases == ()
    assert registry.get(2).metrics["average_precision"] == 0.60
    assert registry.champion() is None and registry.challenger() is None


def test_unknown_version_is_a_typed_error(registry: ModelRegistry) -> None:
    for call in (registry.get, registry.download, registry.plot_names):
        with pytest.raises(ModelVersionNotFound) as err:
            call(7)
        assert err.value.version == 7


def test_download_returns_the_bundle_byte_for_byte(
    registry: ModelRegistry, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = make_bundle()
    version = registry.register(bundle, GOOD, {}, "defs-abc123")
    local = registry.download(version, tmp_path / "worker")
    assert local.is_relative_to(tmp_path / "worker")
    assert files_of(local) == files_of(bundle)
    assert (local / MANIFEST_NAME).is_file()


def test_download_refuses_a_bundle_whose_manifest_changed(
    registry: ModelRegistry, register: Callable[..., int], tmp_path: Path
) -> None:
    version = register()
    if isinstance(registry, InMemoryRegistry):
        registry._versions[version].files[MANIFEST_NAME] = b'{"kind": "swapped"}'
    else:
        (stored,) = (tmp_path / "mlartifacts").rglob(MANIFEST_NAME)
        stored.write_bytes(b'{"kind": "swapped"}')
    with pytest.raises(ArtifactDigestError) as err:
        registry.download(version, tmp_path / "worker")
    assert err.value.path.endswith(MANIFEST_NAME)


def test_plots_are_logged_with_the_run(
    registry: ModelRegistry, register: Callable[..., int], tmp_path: Path
) -> None:
    plot = tmp_path / "roc.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    version = register(plots=[plot])
    assert registry.plot_names(version) == ["roc.png"]
    assert registry.plot_names(register()) == []


def test_pickles_links_and_bare_directories_are_refused(
    registry: ModelRegistry, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    pickled = make_bundle()
    (pickled / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    disguised = make_bundle()
    (disguised / "weights.json").write_bytes(b"\x80\x04K\x01.")
    linked = make_bundle()
    (linked / "elsewhere.json").symlink_to(tmp_path / "outside.json")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "engine.json").write_text("{}")
    for bundle in (pickled, disguised, linked, bare):
        with pytest.raises(UnsafeArtifactError):
            registry.register(bundle, GOOD, {}, "defs-abc123")
    assert registry.list_versions() == []


def test_non_finite_metrics_are_refused(register: Callable[..., int]) -> None:
    with pytest.raises(ValueError, match="auc_roc"):
        register({**GOOD, "auc_roc": float("nan")})


# --- promotion -----------------------------------------------------------------------


def test_first_promotion_needs_no_gate_and_is_recorded(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    version = register(WORSE_AP)
    record = registry.promote(version, actor="ana", reason="first model")
    assert record == PromotionRecord(
        "promote", CHAMPION, version, None, "ana", "first model", T0, False
    )
    champion = registry.champion()
    assert champion is not None
    assert (champion.version, champion.aliases) == (version, (CHAMPION,))
    assert champion.tags["promotion.by"] == "ana"
    assert champion.tags["promotion.reason"] == "first model"
    assert champion.tags["promotion.at"] == T0.isoformat()
    assert champion.tags["promotion.forced"] == "false"
    assert registry.history() == [record]


def test_a_worse_candidate_is_refused_naming_metric_and_values(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    champion = register()
    registry.promote(champion, actor="ana", reason="baseline")
    candidate = register(WORSE_AP)
    with pytest.raises(PromotionRefused) as err:
        registry.promote(candidate, actor="bob", reason="new features")
    refused = err.value
    assert refused.metric == "average_precision"
    assert (refused.champion_version, refused.champion_value) == (champion, 0.68)
    assert (refused.candidate_version, refused.candidate_value) == (candidate, 0.60)
    assert "average_precision" in str(refused) and "0.68" in str(refused)
    current = registry.champion()
    assert current is not None and current.version == champion
    assert len(registry.history()) == 1


def test_tolerance_lets_a_slightly_worse_candidate_through(
    make_registry: Callable[..., ModelRegistry], make_bundle: Callable[..., Path]
) -> None:
    registry = make_registry(promotion_tolerance=0.05)
    champion = registry.register(make_bundle(), GOOD, {}, "h")
    registry.promote(champion, actor="ana", reason="baseline")
    slightly = registry.register(make_bundle(), {**GOOD, "auc_roc": 0.83}, {}, "h")
    registry.promote(slightly, actor="bob", reason="within the configured tolerance")
    much = registry.register(make_bundle(), {**GOOD, "auc_roc": 0.70}, {}, "h")
    with pytest.raises(PromotionRefused, match="auc_roc"):
        registry.promote(much, actor="bob", reason="too far")
    with pytest.raises(ValueError, match="tolerance"):
        registry.promote(much, actor="bob", reason="negative", tolerance=-0.1)
    # An explicit tolerance overrides the configured one.
    registry.promote(much, actor="bob", reason="explicit tolerance", tolerance=0.2)
    assert registry.champion() == registry.get(much)


def test_force_overrides_the_gate_and_says_so(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    registry.promote(register(), actor="ana", reason="baseline")
    worse = register(WORSE_AP)
    record = registry.promote(worse, actor="oncall", reason="incident 42: hotfix", force=True)
    assert record.forced
    champion = registry.champion()
    assert champion is not None and champion.version == worse
    assert champion.tags["promotion.forced"] == "true"


def test_a_candidate_missing_a_gate_metric_is_refused(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    registry.promote(register(), actor="ana", reason="baseline")
    partial = register({"auc_roc": 0.99, "average_precision": 0.99})
    with pytest.raises(MetricMissingError) as err:
        registry.promote(partial, actor="bob", reason="partial")
    assert (err.value.version, err.value.metric) == (partial, "card_precision_at_100")


def test_challenger_is_not_gated_and_leaves_when_promoted(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    registry.promote(register(), actor="ana", reason="baseline")
    shadow = register(WORSE_AP)
    registry.promote(shadow, CHALLENGER, actor="bob", reason="shadow it")
    challenger = registry.challenger()
    assert challenger is not None and challenger.aliases == (CHALLENGER,)
    better = register({**GOOD, "average_precision": 0.70})
    registry.promote(better, CHALLENGER, actor="bob", reason="newer shadow")
    registry.promote(better, actor="bob", reason="won the shadow test")
    champion = registry.champion()
    assert champion is not None and champion.version == better
    assert champion.aliases == (CHAMPION,)
    assert registry.challenger() is None


def test_bad_alias_actor_or_reason_are_refused(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    version = register()
    with pytest.raises(InvalidAlias):
        registry.promote(version, "production", actor="ana", reason="x")
    with pytest.raises(ValueError, match="actor"):
        registry.promote(version, actor=" ", reason="x")
    with pytest.raises(ValueError, match="reason"):
        registry.promote(version, actor="ana", reason="")
    assert registry.history() == []


def test_promoting_the_champion_again_changes_nothing(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    version = register()
    registry.promote(version, actor="ana", reason="baseline")
    registry.promote(version, actor="ana", reason="again")
    assert len(registry.history()) == 1


# --- rollback ------------------------------------------------------------------------


def test_rollback_walks_back_through_previous_champions(
    registry: ModelRegistry, register: Callable[..., int]
) -> None:
    v1, v2, v3 = register(), register(), register()
    for v in (v1, v2, v3):
        registry.promote(v, actor="ana", reason=f"release {v}")
    registry.promote(register(WORSE_AP), CHALLENGER, actor="bob", reason="shadow")

    record = registry.rollback(actor="oncall", reason="alert storm after release 3")
    assert (record.action, record.version, record.previous_version) == ("rollback", v2, v3)
    champion = registry.champion()
    assert champion is not None and champion.version == v2
    assert champion.tags["promotion.action"] == "rollback"
    assert champion.tags["promotion.by"] == "oncall"

    assert registry.rollback(actor="oncall", reason="still bad").version == v1
    with pytest.raises(NothingToRollBack):
        registry.rollback(actor="oncall", reason="nothing left")
    assert [r.action for r in registry.history()] == [
        "promote", "promote", "promote", "promote", "rollback", "rollback",
    ]  # fmt: skip
    assert [r.at for r in registry.history()] == sorted(r.at for r in registry.history())


def test_rollback_without_history_is_a_typed_error(registry: ModelRegistry) -> None:
    with pytest.raises(NothingToRollBack) as err:
        registry.rollback(actor="oncall", reason="x")
    assert err.value.model_name == "fraudstream-engine"


# --- MLflow specifics ----------------------------------------------------------------


@pytest.fixture
def mlflow_only(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.callspec.params["make_registry"] != "mlflow":
        pytest.skip("MLflow storage detail")
    yield


def test_mlflow_state_survives_a_new_client_and_uses_real_aliases(
    mlflow_only: None,
    make_registry: Callable[..., ModelRegistry],
    make_bundle: Callable[..., Path],
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    first = make_registry()
    v1 = first.register(make_bundle(), GOOD, {}, "h")
    v2 = first.register(make_bundle(), GOOD, {}, "h")
    first.promote(v1, actor="ana", reason="baseline")
    first.promote(v2, actor="ana", reason="next")

    again = make_registry()
    assert [v.version for v in again.list_versions()] == [v1, v2]
    assert again.history() == first.history()
    assert again.rollback(actor="oncall", reason="x").version == v1

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert int(client.get_model_version_by_alias("fraudstream-engine", CHAMPION).version) == 1
    source = client.get_model_version("fraudstream-engine", "1").source
    assert source is not None
    assert source.startswith((tmp_path / "mlartifacts").as_uri())
    assert not (Path.cwd() / "mlruns").exists()


# --- configuration and pure rules ----------------------------------------------------


def test_config_from_settings(unit_settings: Settings) -> None:
    config = RegistryConfig.from_settings(unit_settings.mlflow, promotion_tolerance=0.01)
    assert config.model_name == unit_settings.mlflow.model_name
    assert config.tracking_uri == unit_settings.mlflow.tracking_uri
    assert config.promotion_tolerance == 0.01


def test_champion_lineage_replays_promotions_and_rollbacks() -> None:
    def rec(action: str, version: int, alias: str = CHAMPION) -> PromotionRecord:
        return PromotionRecord(action, alias, version, None, "a", "r", T0)  # type: ignore[arg-type]

    history = [rec("promote", 1), rec("promote", 2), rec("promote", 5, CHALLENGER)]
    assert champion_lineage(history) == [1, 2]
    assert champion_lineage([*history, rec("rollback", 1)]) == [1]
    assert champion_lineage([*history, rec("rollback", 1), rec("promote", 3)]) == [1, 3]


def test_check_gate_skips_metrics_the_champion_never_logged() -> None:
    champion = ModelVersion(1, "h", {"auc_roc": 0.9}, {}, {})
    candidate = ModelVersion(2, "h", {"auc_roc": 0.9, "average_precision": 0.1}, {}, {})
    check_gate(candidate, champion, ("average_precision", "auc_roc"), 0.0)
    with pytest.raises(PromotionRefused):
        check_gate(champion, ModelVersion(3, "h", {"auc_roc": 0.95}, {}, {}), ("auc_roc",), 0.04)
