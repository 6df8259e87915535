"""Loading the worker's engines: a bundle directory into a live engine with the
hot-reloaded rule layer, the registry's champion and challenger with the watcher that
follows them, and the rollout's reports as log lines. Used by ``streams.worker`` in the
process that decides (the worker's own, or its decider's child)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from features.definitions import FEATURE_NAMES
from features.table import transaction_only
from fraudstream.drift import ReferenceHistogram
from fraudstream.errors import NoChampionError, RolloutFileError, RuleFileError
from fraudstream.metrics import PrometheusEngineHooks
from fraudstream.settings import Settings
from fraudstream.wire.schemas import Transaction
from models.decide import ScoringEngine
from models.rules import RuleBook, RuleSet, RulesScorer, RulesSettings
from models.rules.lists import RedisListStore
from streams.hotswap import LiveModel, ModelSet, RegistryWatcher, Swap, registry_loader
from streams.rollout import RolloutPlan
from training.bundle import EngineInfo, load_bundle
from training.registry import ModelRegistry, RegistryConfig

log = logging.getLogger(__name__)


class RolloutLog:
    """The rollout's reports as log lines (``streams.hotswap.SwapHooks`` and
    ``streams.routing.RoutingHooks``); counters belong in ``fraudstream.metrics``."""

    def model_staged(self, alias: str, version: int | None, source: str) -> None:
        if version is None:
            log.info("%s alias removed: the %s stops at the next batch", alias, alias)
        else:
            log.info(
                "%s version %s loaded from %s, swapped in at the next batch", alias, version, source
            )

    def model_refused(self, alias: str, version: int, error: BaseException) -> None:
        log.error(
            "%s version %s refused, the engine in force keeps running: %s", alias, version, error
        )

    def poll_failed(self, error: BaseException) -> None:
        log.warning("model registry not reachable, asking again later: %s", error)

    def batch_routed(self, champion: int, canary: int, shadow: int) -> None:
        return None

    def challenger_failed(self, reason: str, error: BaseException | None) -> None:
        log.warning("challenger skipped for a batch (%s)%s", reason, f": {error}" if error else "")

    def models_swapped(self, swaps: Sequence[Swap]) -> None:
        for swap in swaps:
            log.info(
                "%s now %s (was %s)",
                swap.alias,
                swap.new.model_version if swap.new is not None else "none",
                swap.old.model_version if swap.old is not None else "none",
            )

    def rollout_reloaded(self, plan: RolloutPlan) -> None:
        log.info("rollout reloaded: canary_share %s, shadow %s", plan.canary_share, plan.shadow)

    def rollout_rejected(self, error: RolloutFileError) -> None:
        log.error("rollout file rejected, the last good rollout keeps running: %s", error)


def rule_layer(settings: Settings, lists: Any) -> RulesScorer:
    """The ops rule file, re-read every ``rules.reload_interval_s``, with Redis lists."""

    def reloaded(rules: RuleSet) -> None:
        log.info("rules reloaded from %s: version %s", settings.scoring.rules_file, rules.version)

    def rejected(error: RuleFileError) -> None:
        log.error("rule file rejected, the last good rules keep running: %s", error)

    book = RuleBook(
        settings.scoring.rules_file,
        features=FEATURE_NAMES,
        reload_interval_s=settings.rules.reload_interval_s,
        on_reload=reloaded,
        on_error=rejected,
    )
    options = RulesSettings(
        reload_interval_s=settings.rules.reload_interval_s,
        review_score=settings.rules.review_score,
        list_prefix=settings.rules.list_prefix,
    )
    return RulesScorer(book, lists, options)


def engine_builder(
    settings: Settings, client: Any, engine_hooks: PrometheusEngineHooks | None
) -> Callable[[Path, int | None], LiveModel]:
    """Loads a bundle directory into a live engine with the hot-reloaded rule layer."""
    hooks: dict[str, Any] = {}
    if engine_hooks is not None:
        hooks = {
            "on_layer_result": engine_hooks.layer_result,
            "on_breaker_change": engine_hooks.breaker_changed,
            "on_engine_error": engine_hooks.engine_error,
        }

    def build(bundle_dir: Path, version: int | None) -> LiveModel:
        trained = load_bundle(bundle_dir)
        engine = ScoringEngine.from_ensemble(
            trained.ensemble,
            scoring=settings.scoring,
            breaker=settings.breaker,
            rules=rule_layer(settings, RedisListStore(client, prefix=settings.rules.list_prefix)),
            **hooks,
        )
        where = str(bundle_dir) if version is None else f"{settings.mlflow.model_name}/{version}"
        warm_up([*trained.ensemble.layers.values(), *([engine.rules] if engine.rules else [])])
        return LiveModel(engine, version, where, trained.info)

    return build


def score_reference(info: EngineInfo) -> ReferenceHistogram | None:
    """The trained engine's score distribution on held-out rows (for drift), if kept."""
    doc = info.metrics.get("score_reference")
    return ReferenceHistogram.model_validate(doc) if doc else None


def warm_up(layers: Any, rows: int = 8) -> None:
    """Score a small synthetic batch with every layer once, before the first real one:
    the first call of a booster or an ONNX session allocates and compiles, and must not
    make the first real batch miss its deadline (or count as a breaker failure)."""
    from datetime import UTC, datetime

    from models.base import ScoringBatch

    start = datetime(2020, 1, 1, tzinfo=UTC)
    transactions = [
        Transaction(
            schema_version=1,
            transaction_id=f"warm-up-{i}",
            event_time=start,
            card_id=f"warm-up-card-{i}",
            terminal_id="warm-up-terminal",
            amount=10.0 + i,
            currency="EUR",
        )
        for i in range(rows)
    ]
    batch = ScoringBatch(transactions, transaction_only(transactions))
    for layer in layers:
        try:
            layer.score(batch)
        except Exception as exc:  # best effort: e.g. the rules' Redis lists unreachable yet
            log.warning("warm-up of %s failed (%s); its first batch will be slower", layer, exc)


def open_registry(settings: Settings) -> ModelRegistry:
    from training.registry_mlflow import MlflowRegistry  # imports mlflow: only when used

    return MlflowRegistry(RegistryConfig.from_settings(settings.mlflow))


def registry_models(
    settings: Settings,
    registry: ModelRegistry,
    build: Callable[[Path, int | None], LiveModel],
    report: RolloutLog,
) -> tuple[ModelSet, RegistryWatcher]:
    """The champion loaded now (a failure stops start-up), the challenger staged by a
    first poll (a failure only logs), and the watcher that follows both."""
    target = registry.champion()
    if target is None:
        raise NoChampionError(settings.mlflow.model_name, settings.mlflow.tracking_uri)
    load = registry_loader(
        registry,
        build,
        model_name=settings.mlflow.model_name,
        download_dir=settings.models.download_dir,
    )
    models = ModelSet(load(target))
    watcher = RegistryWatcher(registry, load, models, report)
    watcher.poll()
    return models, watcher
