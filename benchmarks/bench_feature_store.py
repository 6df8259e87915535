"""Online feature store: the engine (one EVALSHA per micro-batch) against the naive
design (one round trip per feature per transaction), on the same Redis.

Run from the repository root (a Redis of its own is started and stopped):

    .venv/bin/python -m benchmarks.bench_feature_store            # ~5 minutes
    .venv/bin/python -m benchmarks.bench_feature_store --quick    # < 1 minute
    .venv/bin/python -m benchmarks.bench_feature_store --redis-url redis://127.0.0.1:6379/0

The stream is the handbook's transactions when present (else the simulator's). Both
designs are warmed the same way on the first days of it (same events in the same order,
fraud labels applied when known: 7 days after the payment in the handbook), under their
own key prefixes. The engine warms through ``compute`` at batch 1024; the naive store
through :meth:`NaiveRedisFeatureStore.load`, which writes the state its ``compute``
would, pipelined (warm-up is not what is measured). Each measurement then starts from a
copy of the warmed state (``COPY`` to a fresh prefix) and replays the transactions that
follow: the engine at batch sizes 1, 64, 256 and 1024, the naive store one transaction
per call on fewer of them. Reported: transactions per second, engine/naive ratio,
client-side p50/p99 per ``compute`` call, the Redis-side time (``INFO commandstats``:
``evalsha`` for the engine, every command for the naive store) next to the client's
wall and CPU time, and memory per card and per terminal after warm-up (``MEMORY USAGE``
summed over each entity's keys), with the events each retains. The report is printed
and written to ``<out>/feature_store.md`` (and ``.json``).

Redis and the client share this machine: with two or more CPUs, Redis is pinned to one
and the client to another (``--no-pin`` to leave them to the scheduler); the client is
one thread, as one scoring worker is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.feature_store_report import WARM_BATCH, EntityMemory, Results, Run, report
from benchmarks.feature_store_stream import Stream, handbook_stream, simulated_stream
from benchmarks.naive_feature_store import NaiveRedisFeatureStore
from features.definitions import FEATURE_NAMES, INTEGER_FEATURES
from features.matrix import FeatureMatrix
from features.online import RedisFeatureStore, redis_client_for
from features.table import epoch_ms
from fraudstream.settings import load_settings
from fraudstream.wire.schemas import LabelEvent, Transaction

BATCH_SIZES = (1, 64, 256, 1024)
RESULTS = Path(__file__).resolve().parent / "results"
_EXCLUDED_STATS = ("cmdstat_info", "cmdstat_config", "cmdstat_ping", "cmdstat_copy")


# --- Redis ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(cpu: int | None) -> Iterator[str]:
    """A throwaway ``redis-server`` (no persistence) on a free port; its URL."""
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        port = _free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp, "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            if cpu is not None:
                os.sched_setaffinity(proc.pid, {cpu})
            import redis

            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            else:
                raise SystemExit("redis-server did not start")
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _keys(client: Any, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:*", count=10_000))


def _clone(client: Any, keys: Sequence[bytes], src: str, dst: str) -> None:
    """Copy the state under ``src`` to ``dst`` (TTLs included): a fresh, equal start."""
    n = len(src)
    for s in range(0, len(keys), 5_000):
        pipe = client.pipeline(transaction=False)
        for key in keys[s : s + 5_000]:
            pipe.copy(key, dst.encode() + key[n:], replace=True)
        pipe.execute()


def _drop(client: Any, prefix: str) -> None:
    keys = _keys(client, prefix)
    for s in range(0, len(keys), 5_000):
        client.unlink(*keys[s : s + 5_000])


# --- warm-up -------------------------------------------------------------------------------


def _labels_until(
    labels: Sequence[tuple[int, LabelEvent]], start: int, t: int
) -> tuple[list[LabelEvent], int]:
    end = start
    while end < len(labels) and labels[end][0] <= t:
        end += 1
    return [label for _, label in labels[start:end]], end


def warm(
    write: Callable[[Sequence[Transaction]], object],
    apply_labels: Callable[[Sequence[LabelEvent]], int],
    stream: Stream,
) -> float:
    """Feed the warm-up transactions in batches of ``WARM_BATCH``, each preceded by the
    labels known at its first transaction, then the labels known when measuring starts.
    Returns the seconds it took."""
    start, done = time.perf_counter(), 0
    for s in range(0, len(stream.warm), WARM_BATCH):
        batch = stream.warm[s : s + WARM_BATCH]
        known, done = _labels_until(stream.labels, done, epoch_ms(batch[0].event_time))
        apply_labels(known)
        write(batch)
    known, done = _labels_until(stream.labels, done, epoch_ms(stream.measure[0].event_time))
    apply_labels(known)
    return time.perf_counter() - start


# --- memory --------------------------------------------------------------------------------


def memory(client: Any, design: str, prefix: str) -> tuple[list[EntityMemory], int]:
    """Bytes and retained events per card / terminal (and in all) under ``prefix``."""
    keys = _keys(client, prefix)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    sizes = pipe.execute()
    pipe = client.pipeline(transaction=False)
    logs = [k for k in keys if k.endswith(b":z") and k.split(b":")[-3] in (b"c", b"t")]
    for key in logs:
        pipe.zcard(key)
    events = dict(zip(logs, pipe.execute(), strict=True))
    per: dict[tuple[str, str], list[int]] = {}  # (kind, id) -> [bytes, events]
    skip = len(prefix) + 1
    for key, size in zip(keys, sizes, strict=True):
        kind, _, rest = key[skip:].decode().partition(":")
        entity = rest.rsplit(":", 1)[0] if kind in ("c", "t", "d", "i") else rest
        slot = per.setdefault((kind, entity), [0, 0])
        slot[0] += int(size or 0)
        slot[1] += int(events.get(key, 0))
    out = []
    for kind, name in (("c", "card"), ("t", "terminal"), ("d", "device"), ("i", "ip")):
        rows = [v for (k, _), v in per.items() if k == kind]
        if not rows:
            continue
        b = np.array([r[0] for r in rows], dtype=np.float64)
        e = np.array([r[1] for r in rows], dtype=np.float64)
        out.append(
            EntityMemory(
                design,
                name,
                len(rows),
                float(b.mean()),
                float(np.percentile(b, 99)),
                float(e.mean()),
                float(np.percentile(e, 99)),
            )
        )
    return out, int(sum(int(s or 0) for s in sizes))


# --- measurement ---------------------------------------------------------------------------


def _latency(client: Any, command: str) -> tuple[float | None, float | None]:
    try:
        info = client.info("latencystats")
    except Exception:  # older Redis: no latency percentiles
        return None, None
    got = info.get(f"latency_percentiles_usec_{command}")
    if isinstance(got, str):
        got = dict(part.split("=") for part in got.split(","))
    if not isinstance(got, dict):
        return None, None
    return float(got["p50"]), float(got["p99"])


def measure(
    client: Any,
    design: str,
    compute: Callable[[Sequence[Transaction]], FeatureMatrix],
    transactions: Sequence[Transaction],
    batch: int,
    engine: bool,
) -> tuple[Run, npt.NDArray[np.float64]]:
    """Replay ``transactions`` through ``compute`` in calls of ``batch``; Redis statistics
    are reset first, so they cover this replay only."""
    client.config_resetstat()
    calls: list[float] = []
    rows: list[npt.NDArray[np.float64]] = []
    cpu0, start = time.process_time(), time.perf_counter()
    for s in range(0, len(transactions), batch):
        t0 = time.perf_counter()
        rows.append(compute(transactions[s : s + batch]).values)
        calls.append(time.perf_counter() - t0)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    stats = client.info("commandstats")
    extra: dict[str, Any] = {}
    if engine:
        work = {k: v for k, v in stats.items() if k == "cmdstat_evalsha"}
        p50, p99 = _latency(client, "evalsha")
        inner = {
            k.removeprefix("cmdstat_").upper(): {"calls": int(v["calls"]), "usec": int(v["usec"])}
            for k, v in stats.items()
            if k not in _EXCLUDED_STATS and k not in ("cmdstat_evalsha", "cmdstat_eval")
        }
        extra["script_commands"] = dict(sorted(inner.items(), key=lambda kv: -kv[1]["usec"]))
    else:
        work = {k: v for k, v in stats.items() if k not in _EXCLUDED_STATS}
        p50, p99 = None, None
    run = Run(
        design=design,
        batch=batch,
        transactions=len(transactions),
        calls=len(calls),
        seconds=seconds,
        client_cpu_seconds=cpu,
        call_p50_ms=float(np.percentile(calls, 50) * 1e3),
        call_p99_ms=float(np.percentile(calls, 99) * 1e3),
        redis_usec=sum(int(v["usec"]) for v in work.values()),
        redis_calls=sum(int(v["calls"]) for v in work.values()),
        redis_call_p50_us=p50,
        redis_call_p99_us=p99,
        extra=extra,
    )
    return run, np.vstack(rows)


def ping(client: Any, n: int = 2_000) -> dict[str, float]:
    """What one round trip costs this client on this machine, doing nothing."""
    client.ping()
    cpu0, start = time.process_time(), time.perf_counter()
    for _ in range(n):
        client.ping()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"wall": wall * 1e6 / n, "client_cpu": cpu * 1e6 / n}


def agreement(engine: npt.NDArray[np.float64], naive: npt.NDArray[np.float64]) -> dict[str, float]:
    """Per feature, the share of rows where the two designs agree (NaN = NaN; counts
    exactly, the rest within 1e-9 relative)."""
    out = {}
    for j, name in enumerate(FEATURE_NAMES):
        a, b = engine[:, j], naive[:, j]
        if name in INTEGER_FEATURES:
            same = (a == b) | (np.isnan(a) & np.isnan(b))
        else:
            same = np.isclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)
        out[name] = float(same.mean())
    return out


# --- the run -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument("--redis-url", help="use this Redis (keys under bench:<pid>:...)")
    parser.add_argument("--data", choices=["auto", "handbook", "simulator"], default="auto")
    parser.add_argument("--warm-days", type=int, help="days of history before measuring")
    parser.add_argument("--measure", type=int, help="transactions measured per batch size")
    parser.add_argument("--naive", type=int, help="transactions measured for the naive store")
    parser.add_argument("--no-pin", action="store_true", help="do not pin Redis and client")
    args = parser.parse_args(argv)
    warm_days = args.warm_days or (9 if args.quick else 40)
    n_measure = args.measure or (8_192 if args.quick else 32_768)
    n_naive = args.naive or (1_000 if args.quick else 5_000)

    handbook_path = load_settings(None, {}).data.handbook_path
    use_handbook = args.data == "handbook" or (args.data == "auto" and handbook_path.exists())
    t0 = time.perf_counter()
    if use_handbook:
        stream = handbook_stream(handbook_path, warm_days, n_measure)
    else:
        stream = simulated_stream(warm_days, n_measure)
    print(f"stream: {stream.source} (loaded in {time.perf_counter() - t0:.1f} s)", flush=True)

    cpus = os.cpu_count() or 1
    pin = not args.no_pin and cpus >= 2 and hasattr(os, "sched_setaffinity")
    if pin:
        os.sched_setaffinity(0, {1})
    server = redis_server(0 if pin else None) if args.redis_url is None else None
    with server if server is not None else _given(args.redis_url) as url:
        client = redis_client_for(url, timeout_ms=60_000, connect_timeout_ms=5_000)
        version = client.info("server")["redis_version"]
        where = "started by the benchmark" if server is not None else f"at {url}"
        setup = (
            f"{cpus} CPUs ({platform.processor() or platform.machine()}); Redis {version} "
            f"{where}, over TCP loopback; "
            + (
                "Redis pinned to CPU 0 and the one-thread client to CPU 1"
                if pin
                else "Redis and the one-thread client not pinned"
            )
            + ": they share the machine (and with whatever else runs on it)."
        )
        base = f"bench:{os.getpid()}"
        try:
            res = _run(client, base, stream, n_naive, print_=lambda s: print(s, flush=True))
        finally:
            _drop(client, base)
    text = report(stream, res, setup)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "feature_store.md").write_text(text)
    (args.out / "feature_store.json").write_text(
        json.dumps(
            {
                "source": stream.source,
                "setup": setup,
                **asdict(res),
                "tx_per_s": {f"{r.design}/{r.batch}": r.tx_per_s for r in res.runs},
            },
            indent=1,
        )
    )
    print(f"\nwritten: {args.out / 'feature_store.md'}")


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def _run(
    client: Any, base: str, stream: Stream, n_naive: int, print_: Callable[[str], None]
) -> Results:
    eng_p, naive_p = f"{base}:eng", f"{base}:naive"
    engine = RedisFeatureStore(client, key_prefix=eng_p, timeout_ms=60_000)
    naive = NaiveRedisFeatureStore(client, key_prefix=naive_p)
    warm_s = {
        "engine": warm(engine.compute, engine.apply_labels, stream),
        "naive": warm(naive.load, naive.apply_labels, stream),
    }
    print_(f"warmed: engine {warm_s['engine']:.1f} s, naive {warm_s['naive']:.1f} s")
    mem_e, total_e = memory(client, "engine", eng_p)
    mem_n, total_n = memory(client, "naive", naive_p)

    runs: list[Run] = []
    results: list[npt.NDArray[np.float64]] = []
    eng_keys = _keys(client, eng_p)
    for batch in BATCH_SIZES:
        prefix = f"{base}:e{batch}"
        _clone(client, eng_keys, eng_p, prefix)
        store = RedisFeatureStore(client, key_prefix=prefix, timeout_ms=60_000)
        run, values = measure(client, "engine", store.compute, stream.measure, batch, True)
        _drop(client, prefix)
        runs.append(run)
        results.append(values)
        print_(f"engine batch {batch}: {run.tx_per_s:,.0f} tx/s")
    consistent = all(np.array_equal(results[0], r, equal_nan=True) for r in results[1:])

    prefix = f"{base}:n"
    _clone(client, _keys(client, naive_p), naive_p, prefix)
    store_n = NaiveRedisFeatureStore(client, key_prefix=prefix)
    subset = stream.measure[:n_naive]
    run, values = measure(client, "naive", store_n.compute, subset, 1, False)
    run.round_trips = store_n.round_trips
    _drop(client, prefix)
    runs.append(run)
    print_(f"naive: {run.tx_per_s:,.0f} tx/s")
    return Results(
        runs=runs,
        memory=mem_e + mem_n,
        total_bytes={"engine": total_e, "naive": total_n},
        warm_seconds=warm_s,
        agreement=agreement(results[0][: len(subset)], values),
        engine_consistent=consistent,
        ping_us=ping(client),
    )


if __name__ == "__main__":
    main()
