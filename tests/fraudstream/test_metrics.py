"""Every metric family is fed by its hook, and the exposition is valid for Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from fraudstream.drift import ReferenceHistogram
from fraudstream.errors import FeatureStoreTimeout
from fraudstream.metrics import (
    EngineMetrics,
    PrometheusEngineHooks,
    PrometheusReconcileHooks,
    PrometheusStreamHooks,
    timed,
)
from fraudstream.reconcile.state import Totals
from fraudstream.wire import Decision
from models.breaker import BreakerState
from models.decide import LayerReport
from streams.reconcile import ReconcileOutcome
from streams.scoring import BatchOutcome, LabelOutcome

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)
REFERENCE = ReferenceHistogram(edges=(0.0, 0.5, 1.0), fractions=(0.9, 0.1))


def decision(n: int, *, score: float = 0.1, version: str = "v1") -> Decision:
    return Decision(
        schema_version=1,
        transaction_id=f"tx-{n}",
        card_id="card-1",
        decision="approve",
        score=score,
        reasons=[],
        model_version=version,
        layers_run=["rules"],
        degraded=False,
        latency_ms=1.0,
        event_time=T0,
        decided_at=T0,
        amount=1.0,
        currency="EUR",
    )


def value(metrics: EngineMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def exercise_every_hook(metrics: EngineMetrics) -> None:
    stream = PrometheusStreamHooks(metrics, reference=REFERENCE, drift_window=4)
    engine = PrometheusEngineHooks(metrics)
    reconcile = PrometheusReconcileHooks(metrics)
    stream.batch_processed(
        BatchOutcome(
            rejected=Counter({"malformed_json": 2}),
            outcomes=Counter({"approve": 3, "decline": 1}),
            degraded=1,
            timeout_defaults=1,
        ),
        size=6,
        seconds=0.004,
    )
    stream.labels_processed(LabelOutcome(applied=1), size=1, seconds=0.001)
    stream.pipeline_failed(RuntimeError("boom"))
    stream.decisions_produced([decision(1), decision(2)], T0 + timedelta(milliseconds=40))
    stream.decisions_produced([decision(3, score=0.9, version="v2")], T0 + timedelta(seconds=2))
    stream.deduplicated(hits=3, remembered=10)
    stream.consumer_lag({("transactions", 0): 5, ("transactions", 1): 0})
    stream.commit_guard(rewinds=2, uncounted_acks=7)
    stream.ingress_rewrites({"transaction_id": 4, "other": 1})
    engine.layer_result(LayerReport("xgboost", "ok", 2.0, BreakerState.CLOSED, 4))
    engine.breaker_changed("gnn", "closed", "open")
    engine.feature_store_error(FeatureStoreTimeout(25.0))
    engine.feature_lookup(0.002, ok=True)
    engine.engine_error(RuntimeError("bug"))
    engine.decider_restarted("died")
    engine.decider_late()
    totals = Totals(authorizations=4, settlements=3, matched=2, opened=4, closed=3, open=1)
    totals.exceptions = {"amount_mismatch": 1}
    reconcile.batch_reconciled(
        ReconcileOutcome(
            found=Counter({"amount_mismatch": 1}),
            rejected=Counter({"schema_violation": 1}),
            totals={2: totals},
        ),
        size=7,
        seconds=0.01,
    )


def test_each_hook_reaches_its_series() -> None:
    m = EngineMetrics()
    exercise_every_hook(m)
    assert value(m, "fraudstream_decisions_total", outcome="approve") == 3
    assert value(m, "fraudstream_degraded_decisions_total") == 1
    assert value(m, "fraudstream_deadletters_total", kind="malformed_json") == 2
    assert value(m, "fraudstream_deadletters_total", kind="schema_violation") == 1
    assert value(m, "fraudstream_decision_latency_seconds_count") == 3
    assert value(m, "fraudstream_decision_latency_seconds_bucket", le="0.05") == 2
    assert value(m, "fraudstream_layer_seconds_count", layer="xgboost") == 1
    assert value(m, "fraudstream_breaker_state", layer="gnn") == 2
    assert value(m, "fraudstream_feature_store_seconds_count", result="ok") == 1
    # Only the version deciding last is exported.
    assert value(m, "fraudstream_model_info", version="v2") == 1
    assert value(m, "fraudstream_model_info", version="v1") is None
    assert value(m, "fraudstream_dedupe_hits_total") == 3
    assert value(m, "fraudstream_dedupe_remembered") == 10
    assert value(m, "fraudstream_consumer_lag", topic="transactions", partition="0") == 5
    assert value(m, "fraudstream_consumer_rewinds") == 2
    assert value(m, "fraudstream_consumer_uncounted_acks") == 7
    assert value(m, "fraudstream_ingress_rewritten", field="transaction_id") == 4
    assert value(m, "fraudstream_reconcile_exceptions_total", kind="amount_mismatch") == 1
    assert value(m, "fraudstream_reconcile_state", partition="2", count="matched") == 2
    assert value(m, "fraudstream_reconcile_state", partition="2", count="open") == 1
    assert (
        value(
            m, "fraudstream_reconcile_partition_exceptions", partition="2", kind="amount_mismatch"
        )
        == 1
    )
    assert value(m, "fraudstream_score_window") == 3
    psi = value(m, "fraudstream_score_psi")
    assert psi is not None and psi > 0.25  # a third of the scores high, a tenth expected


def test_a_layer_that_ran_shows_closed_until_its_breaker_changes() -> None:
    m = EngineMetrics()
    stream, engine = PrometheusStreamHooks(m), PrometheusEngineHooks(m)
    engine.breaker_changed("gnn", "closed", "open")
    stream.decisions_produced([decision(1)], T0)  # ran: rules (the gnn did not)
    assert value(m, "fraudstream_breaker_state", layer="rules") == 0
    assert value(m, "fraudstream_breaker_state", layer="gnn") == 2
    engine.breaker_changed("rules", "closed", "open")
    stream.decisions_produced([decision(2)], T0)
    assert value(m, "fraudstream_breaker_state", layer="rules") == 2


def test_consumer_lag_drops_partitions_no_longer_assigned() -> None:
    m = EngineMetrics()
    hooks = PrometheusStreamHooks(m)
    hooks.consumer_lag({("transactions", 0): 5, ("transactions", 1): 2})
    hooks.consumer_lag({("transactions", 1): 0})
    assert value(m, "fraudstream_consumer_lag", topic="transactions", partition="0") is None
    assert value(m, "fraudstream_consumer_lag", topic="transactions", partition="1") == 0


def test_without_a_reference_no_drift_is_exported() -> None:
    m = EngineMetrics()
    PrometheusStreamHooks(m).decisions_produced([decision(1)], T0)
    assert value(m, "fraudstream_score_window") == 0
    assert value(m, "fraudstream_model_info", version="v1") == 1


def test_timed_reports_success_and_failure_and_re_raises() -> None:
    seen: list[tuple[float, bool]] = []

    def lookup(batch: list[int]) -> int:
        if not batch:
            raise FeatureStoreTimeout(25.0)
        return len(batch)

    timed_lookup = timed(lookup, lambda s, ok: seen.append((s, ok)))
    assert timed_lookup([1, 2]) == 2
    with pytest.raises(FeatureStoreTimeout):
        timed_lookup([])
    assert [ok for _, ok in seen] == [True, False]
    assert all(s >= 0 for s, _ in seen)


def test_the_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make setup installs it where available)")
    m = EngineMetrics()
    exercise_every_hook(m)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(m.registry),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr).decode()


def test_the_dashboard_shows_every_family_and_only_real_series() -> None:
    dashboard = json.loads((REPO / "config" / "grafana" / "fraudstream.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"fraudstream_[a-z_]+", e)}
    m = EngineMetrics()
    exercise_every_hook(m)
    samples = {s.name for family in m.registry.collect() for s in family.samples}
    families = {family.name for family in m.registry.collect()}
    assert used <= samples, used - samples
    shown = {f for f in families if any(name.startswith(f) for name in used)}
    assert shown == families, families - shown
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
