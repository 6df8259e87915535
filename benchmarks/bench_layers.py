"""Per-layer cost per transaction at batch 256, plus a quality check of each layer.

Run from the repository root (not a test; a few minutes on two cores):

    .venv/bin/python -m benchmarks.bench_layers                    # handbook fold
    .venv/bin/python -m benchmarks.bench_layers --data simulator   # devices, IPs, rings
    .venv/bin/python -m benchmarks.bench_layers --data synthetic   # nothing needed

``handbook``: the first prequential test fold (training week 2018-07-25, test week
2018-08-08, labels known after 7 days) with the handbook's 15 features. ``simulator``:
45 days of ``fraudstream.simulator`` traffic with its own delayed labels, trained on
days 23-30 and tested on days 31-45, with transaction-only tabular features (the
feature store's history features are not used here), and AUC per attack. The GNN's
embeddings are refreshed every test day, as online. AUC, average precision and a
simplified card precision@100 (compromised cards are not removed) are reported.

Costs are timed on one thread, as a worker scores. Scorers from
``tests/models/factories_rules.py`` (rules, meta-ensemble) are timed too when present.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from threadpoolctl import threadpool_limits

from features.matrix import FeatureMatrix
from fraudstream.settings import load_settings
from models.base import Scorer, ScoringBatch
from models.gnn import GNNConfig, GNNScorer, GraphState
from models.iforest import IsolationForestScorer
from models.xgb import XGBoostParams, XGBoostScorer
from tests.models.factories import make_batch, synthetic_world, wire_transactions

BATCH = 256
HANDBOOK_TRAIN = pd.Timestamp("2018-07-25", tz="UTC")
HANDBOOK_TEST = pd.Timestamp("2018-08-08", tz="UTC")
WINDOWS = (1, 7, 30)


@dataclass(frozen=True)
class Dataset:
    label: str
    frame: pd.DataFrame  # transactions, time-sorted; is_fraud; maybe label_known_at, attack
    features: FeatureMatrix
    train: np.ndarray  # rows the tabular layers train on
    graph: np.ndarray  # rows the GNN trains on (history before and the training rows)
    test: np.ndarray
    config: GNNConfig


# --- data -------------------------------------------------------------------------------


def handbook(path: Path, epochs: int) -> Dataset:
    raw = pd.read_parquet(path)
    start = HANDBOOK_TRAIN.tz_convert(None) - timedelta(days=31)
    end = HANDBOOK_TEST.tz_convert(None) + timedelta(days=7)
    raw = raw[raw.TX_DATETIME.between(start, end, inclusive="left")]
    frame = pd.DataFrame(
        {
            "transaction_id": raw.TRANSACTION_ID.astype(str).to_numpy(),
            "event_time": raw.TX_DATETIME.dt.tz_localize("UTC").to_numpy(),
            "card_id": ("c" + raw.CUSTOMER_ID.astype(str)).to_numpy(),
            "terminal_id": ("t" + raw.TERMINAL_ID.astype(str)).to_numpy(),
            "amount": raw.TX_AMOUNT.to_numpy(),
            "is_fraud": raw.TX_FRAUD.to_numpy(),
        }
    )
    frame = frame.sort_values(["event_time", "transaction_id"]).reset_index(drop=True)
    times = frame["event_time"]
    config = GNNConfig(
        entity_columns=("card_id", "terminal_id"),
        label_delay_days=7,
        train_snapshots=7,
        epochs=epochs,
    )
    return Dataset(
        f"handbook fold: train {HANDBOOK_TRAIN:%Y-%m-%d}, test {HANDBOOK_TEST:%Y-%m-%d}",
        frame,
        handbook_features(frame, delay_days=7),
        ((times >= HANDBOOK_TRAIN) & (times < HANDBOOK_TRAIN + timedelta(days=7))).to_numpy(),
        (times < HANDBOOK_TRAIN + timedelta(days=7)).to_numpy(),
        (times >= HANDBOOK_TEST).to_numpy(),
        config,
    )


def _rolling(frame: pd.DataFrame, key: str, column: str, days: int, how: str) -> np.ndarray:
    ordered = frame.sort_values([key, "event_time"])
    rolled = ordered.set_index("event_time").groupby(key)[column].rolling(f"{days}D").agg(how)
    aligned = pd.Series(rolled.to_numpy(), index=ordered.index).reindex(frame.index)
    return np.asarray(aligned, dtype=np.float64)


def handbook_features(frame: pd.DataFrame, delay_days: int) -> FeatureMatrix:
    """The handbook's 15 features, named the way the reasons table reads them."""
    local = frame["event_time"].dt.tz_convert(None)
    columns: dict[str, np.ndarray] = {
        "amount": frame["amount"].to_numpy(np.float64),
        "is_weekend": (local.dt.day_of_week >= 5).to_numpy(np.float64),
        "is_night": (local.dt.hour <= 6).to_numpy(np.float64),
    }
    for n in WINDOWS:
        columns[f"card_tx_count_{n}d"] = _rolling(frame, "card_id", "amount", n, "count")
        columns[f"card_mean_amount_{n}d"] = _rolling(frame, "card_id", "amount", n, "mean")
    seen_delay = _rolling(frame, "terminal_id", "amount", delay_days, "count")
    fraud_delay = _rolling(frame, "terminal_id", "is_fraud", delay_days, "sum")
    for n in WINDOWS:
        # Window (t - delay - n, t - delay]: the labels inside it are known at t.
        count = _rolling(frame, "terminal_id", "amount", delay_days + n, "count") - seen_delay
        fraud = _rolling(frame, "terminal_id", "is_fraud", delay_days + n, "sum") - fraud_delay
        columns[f"terminal_tx_count_{n}d"] = count
        columns[f"terminal_fraud_rate_{n}d"] = np.where(count > 0, fraud / np.maximum(count, 1), 0)
    return FeatureMatrix(tuple(columns), np.column_stack(list(columns.values())))


def simulator(epochs: int) -> Dataset:
    from fraudstream.simulator import SimulatorConfig, generate

    data = generate(SimulatorConfig(seed=7, n_cards=3000, days=45))
    known = data.labels[["transaction_id", "label_time"]].rename(
        columns={"label_time": "label_known_at"}
    )
    frame = data.transactions.merge(known, on="transaction_id", how="left")
    frame = frame.sort_values("event_time").reset_index(drop=True)
    columns = {
        "amount": frame["amount"].to_numpy(np.float64),
        "hour": frame["event_time"].dt.hour.to_numpy(np.float64),
        "has_device": frame["device_id"].notna().to_numpy(np.float64),
        "has_ip": frame["ip"].notna().to_numpy(np.float64),
    }
    for channel in ("pos", "ecom", "moto", "atm", "contactless"):
        columns[f"channel_{channel}"] = (frame["channel"] == channel).to_numpy(np.float64)
    day = (frame["event_time"] - frame["event_time"].min().normalize()) / pd.Timedelta(days=1)
    return Dataset(
        "simulator: 3000 cards, 45 days, train days 23-30, test days 31-45",
        frame,
        FeatureMatrix(tuple(columns), np.column_stack(list(columns.values()))),
        ((day >= 23) & (day < 30)).to_numpy(),
        (day < 30).to_numpy(),
        (day >= 31).to_numpy(),
        GNNConfig(train_snapshots=7, epochs=epochs),
    )


def synthetic(epochs: int) -> Dataset:
    world = synthetic_world(60_000, seed=0, days=30, cards=3000, terminals=600)
    day = (world.transactions["event_time"] - world.transactions["event_time"].min()).dt.days
    return Dataset(
        "synthetic world of tests/models/factories.py",
        world.transactions,
        world.features,
        ((day >= 13) & (day < 20)).to_numpy(),
        (day < 20).to_numpy(),
        (day >= 20).to_numpy(),
        GNNConfig(label_delay_days=2, history_days=20, train_snapshots=7, epochs=epochs),
    )


# --- measuring --------------------------------------------------------------------------


def per_tx_us(run: Callable[[int], object], calls: int, rows: int = BATCH) -> tuple[float, float]:
    """Median and p99 microseconds per transaction over ``calls`` timed calls."""
    run(0)  # warm caches and lazy initialisation
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        run(i)
        samples.append((time.perf_counter() - start) / rows * 1e6)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def card_precision_at_100(frame: pd.DataFrame, scores: np.ndarray) -> float:
    """Per test day: rank cards by their max score, share of frauds among the top 100."""
    daily = frame.assign(score=scores, day=frame["event_time"].dt.floor("D"))
    cards = daily.groupby(["day", "card_id"]).agg(score=("score", "max"), fraud=("is_fraud", "max"))
    tops = cards.sort_values("score", ascending=False).groupby(level="day").head(100)
    return float(tops.groupby(level="day")["fraud"].mean().mean())


def quality(test: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    labels = test["is_fraud"].to_numpy()
    out = {
        "auc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "cp@100": card_precision_at_100(test, scores),
    }
    if "attack" in test.columns:
        for attack in sorted(set(test["attack"]) - {"none"}):
            rows = test["attack"].isin([attack, "none"]).to_numpy()
            out[f"auc {attack}"] = roc_auc_score(labels[rows], scores[rows])
    return out


def skl2onnx_session(forest: object, n_features: int) -> ort.InferenceSession:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(
        forest,
        initial_types=[("x", FloatTensorType([None, n_features]))],
        target_opset={"": 15, "ai.onnx.ml": 3},
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _scoring(scorer: Scorer, batches: list[ScoringBatch]) -> Callable[[int], object]:
    return lambda i: scorer.score(batches[i % len(batches)])


def other_factories() -> dict[str, Callable[[Path], Scorer]]:
    try:
        module = importlib.import_module("tests.models.factories_rules")
    except ModuleNotFoundError:
        return {}
    factories: dict[str, Callable[[Path], Scorer]] = module.FACTORIES
    return factories


# --- the run ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", choices=["handbook", "simulator", "synthetic"], default="handbook"
    )
    parser.add_argument("--batches", type=int, default=200, help="timed batches per layer")
    parser.add_argument("--epochs", type=int, default=40, help="GNN joint training epochs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    settings = load_settings(env=dict(os.environ))

    start = time.perf_counter()
    if args.data == "handbook" and settings.data.handbook_path.exists():
        data = handbook(settings.data.handbook_path, args.epochs)
    elif args.data == "handbook":
        raise SystemExit(f"no handbook data at {settings.data.handbook_path}; see its README")
    else:
        data = simulator(args.epochs) if args.data == "simulator" else synthetic(args.epochs)
    print(f"{data.label}: {len(data.frame):,} rows ({time.perf_counter() - start:.0f} s)")
    results: dict[str, object] = {"data": data.label}

    labels = data.frame["is_fraud"].to_numpy()
    names, values = data.features.names, data.features.values
    fit_seconds: dict[str, float] = {}

    def timed_fit(name: str, fit: Callable[[], Scorer]) -> Scorer:
        begin = time.perf_counter()
        scorer = fit()
        fit_seconds[name] = time.perf_counter() - begin
        return scorer

    train_x = FeatureMatrix(names, values[data.train])
    xgb_model = timed_fit(
        "xgboost",
        lambda: XGBoostScorer.fit(
            train_x, labels[data.train], params=XGBoostParams(train_threads=2)
        ),
    )
    iforest = timed_fit("iforest", lambda: IsolationForestScorer.fit(train_x, labels[data.train]))
    history = data.frame[data.graph]
    gnn = timed_fit(
        "gnn",
        lambda: GNNScorer.fit(
            history,
            FeatureMatrix(names, values[data.graph]),
            labels[data.graph],
            config=data.config,
        ),
    )
    graph_only = timed_fit(
        "gnn (graph only)",
        lambda: GNNScorer.fit(history, None, labels[data.graph], config=data.config),
    )
    assert isinstance(xgb_model, XGBoostScorer) and isinstance(iforest, IsolationForestScorer)
    assert isinstance(gnn, GNNScorer) and isinstance(graph_only, GNNScorer)
    results["fit_seconds"] = fit_seconds

    # Quality over the test period, the GNN embeddings refreshed at each day's start.
    test = data.frame[data.test].reset_index(drop=True)
    test_x = FeatureMatrix(names, values[data.test])
    state = GraphState(gnn.entity_columns, data.config.history)
    state.append_frame(data.frame, label_delay=data.config.label_delay)
    days = test["event_time"].dt.floor("D")
    refresh_seconds, gnn_scores, graph_scores = [], np.zeros(len(test)), np.zeros(len(test))
    for day in days.unique():
        rows = (days == day).to_numpy()
        batch = ScoringBatch(
            wire_transactions(test[rows]), FeatureMatrix(names, test_x.values[rows])
        )
        begin = time.perf_counter()
        refreshed = gnn.refresh(state, day.to_pydatetime())
        refresh_seconds.append(time.perf_counter() - begin)
        gnn_scores[rows] = refreshed.score(batch)
        graph_scores[rows] = graph_only.refresh(state, day.to_pydatetime()).score(batch)
    whole = ScoringBatch(wire_transactions(test), test_x)
    layer_scores = {
        "xgboost": xgb_model.score(whole),
        "iforest": iforest.score(whole),
        "gnn": gnn_scores,
        "gnn (graph only)": graph_scores,
    }
    by_layer = {name: quality(test, s) for name, s in layer_scores.items()}
    results["quality"] = by_layer
    results["gnn_refresh_seconds"] = statistics.median(refresh_seconds)
    snapshot = state.snapshot(days.iloc[0].to_pydatetime())
    results["graph"] = {
        "nodes": {t: len(n.ids) for t, n in snapshot.nodes.items()},
        "edges": sum(e.shape[1] for e in snapshot.edges.values()),
    }

    # Cost per transaction at batch 256.
    count = max(1, min(args.batches, len(test) // BATCH))
    batches = [
        ScoringBatch(
            wire_transactions(test.iloc[i * BATCH : (i + 1) * BATCH]),
            FeatureMatrix(names, test_x.values[i * BATCH : (i + 1) * BATCH]),
        )
        for i in range(count)
    ]
    imputed = [iforest.tree_input(b) for b in batches]
    forest = iforest.forest
    assert forest is not None
    converted = skl2onnx_session(forest, len(names))
    synthetic_batches = [make_batch(BATCH, seed=s) for s in range(8)]
    n, quarter = args.batches, max(1, args.batches // 4)
    cases: list[tuple[str, Callable[[int], object], int]] = [
        ("xgboost score", lambda i: xgb_model.score(batches[i % count]), n),
        (
            "xgboost explain, exact TreeSHAP, top 3",
            lambda i: xgb_model.explain(batches[i % count], np.zeros(BATCH)),
            quarter,
        ),
        (
            "xgboost explain, approximate, top 3",
            lambda i: xgb_model.explain(batches[i % count], np.zeros(BATCH), approximate=True),
            n,
        ),
        (
            "iforest: scikit-learn score_samples",
            lambda i: forest.score_samples(imputed[i % count]),
            quarter,
        ),
        (
            "iforest: skl2onnx graph in onnxruntime",
            lambda i: converted.run(None, {"x": imputed[i % count].astype(np.float32)}),
            quarter,
        ),
        (
            "iforest: compact ONNX graph (anomaly only)",
            lambda i: iforest.anomaly(imputed[i % count]),
            n,
        ),
        ("iforest score (impute + ONNX + CDF)", lambda i: iforest.score(batches[i % count]), n),
        ("gnn score (lookup + head)", lambda i: gnn.score(batches[i % count]), n),
        (
            "xgboost + iforest + gnn, in sequence",
            lambda i: [s.score(batches[i % count]) for s in (xgb_model, iforest, gnn)],
            n,
        ),
    ]
    for name, factory in other_factories().items():
        scorer = factory(Path(tempfile.mkdtemp(prefix=f"bench-{name}-")))
        cases.append(
            (
                f"{name} score ({type(scorer).__name__}, synthetic batch)",
                _scoring(scorer, synthetic_batches),
                n,
            )
        )
    with threadpool_limits(1):
        costs = {name: per_tx_us(run, calls) for name, run, calls in cases}
    results["cost_us_per_tx"] = {k: {"median": m, "p99": p} for k, (m, p) in costs.items()}

    print("fit seconds:", {k: round(v, 1) for k, v in fit_seconds.items()})
    print(f"\nquality over the test period ({data.label}):")
    for name, measures in by_layer.items():
        print(f"  {name:<18}" + "  ".join(f"{k} {v:.3f}" for k, v in measures.items()))
    print(f"\ncost per transaction at batch {BATCH}, one thread (µs):")
    print(f"  {'':<58}{'median':>9}{'p99':>9}")
    for name, (median, p99) in costs.items():
        print(f"  {name:<58}{median:>9.2f}{p99:>9.2f}")
    print(
        f"\ngnn refresh (snapshot + encoder over {results['graph']}): "
        f"{results['gnn_refresh_seconds']:.2f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
