"""``fraudstream demo``: the first command a newcomer runs.

Makes sure there is a trained engine (without one, trains a small one on simulated
data first: about a minute on two cores), brings the dev stack up, starts a worker,
replays simulated transactions from after the training period (a few with defects), and
prints the decisions as they arrive plus a summary. The stack is left running so the
topics can be inspected; ``fraudstream devstack down`` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from fraudstream.settings import Settings
from streams.demo_engine import DEMO_START, TRAIN_DAYS, demo_simulation, ensure_engine
from streams.kafka_config import aiokafka_kwargs
from streams.topics import ensure_topics

if TYPE_CHECKING:
    from fraudstream.simulator import SimulatedData

DEFECTS = [b"{not json", b'{"schema_version": 42}']

# The `fraudstream` command in a child process. Not `python -m fraudstream.cli`: that runs
# the CLI module as __main__, and a subcommand module importing fraudstream.cli at its
# top would then import (and run) it a second time.
FRAUDSTREAM_COMMAND = (sys.executable, "-c", "from fraudstream.cli import main; main()")


def _demo_messages(data: SimulatedData, count: int) -> list[tuple[bytes | None, bytes]]:
    from fraudstream.simulator import to_json_lines

    tx = data.transactions
    replay_from = DEMO_START + timedelta(days=TRAIN_DAYS)
    frame = tx[tx["event_time"] >= replay_from].head(count)
    keys = [card.encode() for card in frame["card_id"]]
    messages: list[tuple[bytes | None, bytes]] = list(zip(keys, to_json_lines(frame), strict=True))
    for n, defect in enumerate(DEFECTS):
        messages.insert((n + 1) * len(messages) // (len(DEFECTS) + 1), (None, defect))
    return messages


def _replayed_frauds(data: SimulatedData, count: int) -> dict[str, str]:
    """transaction id -> attack, of the simulated frauds among the replayed rows."""
    tx = data.transactions
    frame = tx[tx["event_time"] >= DEMO_START + timedelta(days=TRAIN_DAYS)].head(count)
    frauds = frame[frame["is_fraud"] == 1]
    return dict(
        zip(frauds["transaction_id"].astype(str), frauds["attack"].astype(str), strict=True)
    )


def _line(value: dict[str, Any], attack: str | None) -> str:
    colour = {"approve": "green", "review": "yellow", "decline": "red"}[value["decision"]]
    reasons = ",".join(r["code"] for r in value["reasons"][:2])
    return (
        f"[{colour}]{value['decision']:>7}[/{colour}] {value['transaction_id']} "
        f"{value['amount']:>9.2f} {value['currency']} score {value['score']:.3f}"
        + (f" {reasons}" if reasons else "")
        + (" [dim](degraded)[/dim]" if value["degraded"] else "")
        + (f" [magenta]← simulated {attack}[/magenta]" if attack else "")
    )


@dataclass
class DemoResult:
    decisions: list[dict[str, Any]] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    started: float = 0.0  # monotonic time the replay began


async def _replay_and_watch(
    settings: Settings,
    messages: list[tuple[bytes | None, bytes]],
    settlements: list[tuple[bytes | None, bytes]],
    console: Console,
    frauds: dict[str, str],
) -> DemoResult:
    """Produce the transactions, watch decisions, dead letters and authorizations come
    back; then produce the settlements and watch reconciliation report."""
    topics = settings.kafka.topics
    kwargs = aiokafka_kwargs(settings.kafka)
    watched = (
        topics.decisions,
        topics.deadletter,
        topics.authorizations,
        topics.reconciliation_exceptions,
    )
    consumer = AIOKafkaConsumer(*watched, group_id=None, auto_offset_reset="latest", **kwargs)
    await consumer.start()
    # Make sure the consumer has its position before anything is produced.
    await consumer.getmany(timeout_ms=200)
    producer = AIOKafkaProducer(acks="all", linger_ms=5, **kwargs)
    await producer.start()
    result = DemoResult()
    sent_at: dict[str, float] = {}
    started = result.started = time.monotonic()
    for key, value in messages:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # the broken ones
            sent_at[json.loads(value)["transaction_id"]] = time.monotonic()
        await producer.send(topics.transactions, value, key=key)
    await producer.flush()

    expected = len(messages) - len(DEFECTS)
    settled = False
    quiet_until: float | None = None
    deadline = time.monotonic() + 180
    live = Live(summary_table(result, frauds, "live"), console=console, transient=True)
    with live:
        while time.monotonic() < deadline:
            done = (
                len(result.decisions) >= expected
                and len(result.letters) >= len(DEFECTS)
                and len(result.authorizations) >= expected
            )
            if done and not settled:
                result.seconds = time.monotonic() - started
                console.print(f"replaying {len(settlements)} settlements for reconciliation")
                for key, value in settlements:
                    await producer.send(topics.settlements, value, key=key)
                await producer.flush()
                settled = True
                quiet_until = time.monotonic() + 8.0
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    _received(
                        tp.topic,
                        json.loads(record.value),
                        topics,
                        result=result,
                        console=console,
                        frauds=frauds,
                    )
                    if tp.topic == topics.decisions:
                        tx_id = result.decisions[-1]["transaction_id"]
                        if tx_id in sent_at:
                            result.latencies_ms.append(1000 * (time.monotonic() - sent_at[tx_id]))
            live.update(summary_table(result, frauds, "live"))
    await producer.stop()
    await consumer.stop()
    if not result.seconds:
        result.seconds = time.monotonic() - started
    return result


def _received(
    topic: str,
    value: dict[str, Any],
    topics: Any,
    *,
    result: DemoResult,
    console: Console,
    frauds: dict[str, str],
) -> None:
    if topic == topics.deadletter:
        result.letters.append(value)
        console.print(f"[yellow]dead letter[/yellow] {value['kind']}: {value['reason'][:70]}")
    elif topic == topics.authorizations:
        result.authorizations.append(value)
    elif topic == topics.reconciliation_exceptions:
        result.exceptions.append(value)
        console.print(f"[cyan]reconciliation[/cyan] {value['kind']} {value['transaction_id']}")
    else:
        result.decisions.append(value)
        attack = frauds.get(value["transaction_id"])
        if len(result.decisions) <= 10 or value["decision"] != "approve" or attack:
            console.print(_line(value, attack))
        if len(result.decisions) == 1:
            layers = ", ".join(value["layers_run"])
            console.print(f"[dim]model {value['model_version']}, layers {layers}[/dim]")


def _settlement_messages(
    data: SimulatedData, messages: list[tuple[bytes | None, bytes]]
) -> list[tuple[bytes | None, bytes]]:
    """The simulator's settlements of the replayed payments (and the unknown ones of the
    same days), in settlement time order, without the ground-truth column."""
    import pandas as pd

    from fraudstream.reconcile.replay import settlements
    from fraudstream.wire import encode

    replayed = set()
    for _, value in messages:
        try:
            replayed.add(json.loads(value)["transaction_id"])
        except (ValueError, KeyError, TypeError):
            continue
    frame = data.settlements
    ours = frame[frame["transaction_id"].isin(replayed)]
    # A few settlements nobody authorised, from the same days as ours (event time: one
    # from weeks later would move reconciliation's clock past every open deadline).
    unknown = frame[
        (frame["injected"] == "unknown_authorization")
        & frame["settled_at"].between(ours["settled_at"].min(), ours["settled_at"].max())
    ]
    chosen = pd.concat([ours, unknown.iloc[::5]])
    chosen = chosen.sort_values("settled_at", kind="stable")
    return [(s.card_id.encode(), encode(s)) for s in settlements(chosen)]


def _renamed_for_run(data: SimulatedData, run: str) -> SimulatedData:
    """The simulation with transaction ids unique to this run: the same seed gives the
    same ids, and a second demo against the same stack would otherwise be (rightly)
    recognised as redelivery by the worker and the authorization service."""
    import dataclasses

    def renamed(frame: Any) -> Any:
        out = frame.copy()
        out["transaction_id"] = run + "-" + out["transaction_id"].astype(str)
        return out

    return dataclasses.replace(
        data, transactions=renamed(data.transactions), settlements=renamed(data.settlements)
    )


def isolated_run(settings: Settings, run: str) -> tuple[Settings, dict[str, str]]:
    """Settings (and the same as environment variables for the child processes) with
    topics, consumer group and feature keys of this run's own. Each demo replays the
    same simulated days: sharing state with an earlier run would make its decisions
    redeliveries and put reconciliation's event-time clock weeks ahead of them."""
    names = settings.kafka.topics.model_dump()
    topics = settings.kafka.topics.model_copy(update={k: f"{v}.{run}" for k, v in names.items()})
    app_id = f"{settings.worker.app_id}-{run}"
    isolated = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topics": topics}),
            "worker": settings.worker.model_copy(update={"app_id": app_id}),
            "features": settings.features.model_copy(update={"key_prefix": run}),
        }
    )
    env = {f"FRAUDSTREAM__KAFKA__TOPICS__{k.upper()}": f"{v}.{run}" for k, v in names.items()}
    env["FRAUDSTREAM__WORKER__APP_ID"] = app_id
    env["FRAUDSTREAM__FEATURES__KEY_PREFIX"] = run
    return isolated, env


def run_demo(settings: Settings, count: int = 500, seed: int = 7) -> None:
    from fraudstream.devstack import DevStack

    console = Console()
    console.rule("fraudstream demo")
    data = demo_simulation(seed)
    ensure_engine(settings, data, seed, console)
    info = DevStack(settings.devstack).up()
    console.print(f"Kafka at {info.kafka_bootstrap}, Redis at {info.redis_url}")
    run = f"r{int(time.time()) % 10**7}"
    settings, run_env = isolated_run(settings, run)
    console.print(
        f"this run's topics end in .{run}; its consumer group is {settings.worker.app_id}"
    )
    asyncio.run(ensure_topics(settings.kafka))

    log_path = Path(settings.devstack.home) / "demo-worker.log"
    auth_log = Path(settings.devstack.home) / "demo-authorize.log"
    console.print(f"starting a worker (log: {log_path}) and the authorization service")
    data = _renamed_for_run(data, run)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **run_env}
    pid_file = Path(settings.devstack.home) / "demo-worker.pid"
    _stop_previous_worker(pid_file)
    worker = _start("worker", log_path, env)
    authorizer = _start("authorize", auth_log, env)
    finished = False
    try:
        _wait_for_ready(log_path, worker)
        messages = _demo_messages(data, count)
        frauds = _replayed_frauds(data, count)
        console.print(
            f"replaying {len(messages)} messages ({len(DEFECTS)} deliberately broken, "
            f"{len(frauds)} simulated frauds); showing the first decisions, then every "
            "review, decline and fraud"
        )
        result = asyncio.run(
            _replay_and_watch(
                settings, messages, _settlement_messages(data, messages), console, frauds
            )
        )
        finished = True
    finally:
        # The worker stays up after a good run, so its metrics endpoint can be looked at.
        stopping = [authorizer] if finished else [worker, authorizer]
        for proc in stopping:
            proc.terminate()
        for proc in stopping:
            proc.wait(30)
    pid_file.write_text(str(worker.pid))

    console.print(summary_table(result, frauds, title="summary"))
    _print_where_to_look(settings, console, worker.pid)
    console.print("The dev stack is still up; stop it with [bold]fraudstream devstack down[/bold].")


def summary_table(result: DemoResult, frauds: dict[str, str], title: str) -> Table:
    """What the run has shown so far: decisions, frauds caught, authorizations,
    reconciliation exceptions, throughput and latency (refreshed live, then final)."""
    decisions = result.decisions
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for outcome, n in sorted(Counter(d["decision"] for d in decisions).items()):
        table.add_row(f"decision: {outcome}", str(n))
    flagged = {d["transaction_id"] for d in decisions if d["decision"] != "approve"}
    table.add_row("simulated frauds", str(len(frauds)))
    table.add_row("  of them reviewed or declined", str(len(flagged & set(frauds))))
    table.add_row("genuine reviewed or declined", str(len(flagged - set(frauds))))
    table.add_row("degraded decisions", str(sum(bool(d["degraded"]) for d in decisions)))
    table.add_row("deadline defaults", str(sum(bool(d.get("timeout_default")) for d in decisions)))
    table.add_row("dead letters", str(len(result.letters)))
    for code, n in sorted(Counter(a["response_code"] for a in result.authorizations).items()):
        table.add_row(f"authorizations: response {code}", str(n))
    for kind, n in sorted(Counter(e["kind"] for e in result.exceptions).items()):
        table.add_row(f"reconciliation: {kind}", str(n))
    seconds = result.seconds or (time.monotonic() - result.started if result.started else 0.0)
    table.add_row("seconds (produce → last decision)", f"{seconds:.2f}")
    if seconds:
        table.add_row("decisions per second", f"{len(decisions) / seconds:,.0f}")
    if result.latencies_ms:
        p50, p95, p99 = np.percentile(result.latencies_ms, [50, 95, 99])
        table.add_row("latency produce → decision p50/p95/p99 ms", f"{p50:.0f}/{p95:.0f}/{p99:.0f}")
    return table


def _print_where_to_look(settings: Settings, console: Console, worker_pid: int) -> None:
    port = settings.worker.metrics_port
    if port:
        console.print(f"metrics: http://127.0.0.1:{port}/metrics")
    console.print(
        f"the worker is still running (pid {worker_pid}; the next demo stops it, or "
        f"[bold]kill {worker_pid}[/bold]); MLflow: [bold]mlflow ui --backend-store-uri "
        f"{settings.mlflow.tracking_uri}[/bold]"
    )


def _stop_previous_worker(pid_file: Path) -> None:
    """The worker an earlier demo left running (it holds the metrics port)."""
    import signal

    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"fraudstream" in cmdline and b"worker" in cmdline:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


def _start(command: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("w") as log:
        return subprocess.Popen(
            [*FRAUDSTREAM_COMMAND, command], stdout=log, stderr=subprocess.STDOUT, env=env
        )


def _wait_for_ready(log_path: Path, worker: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited early; see {log_path}")
        if "Ready" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the worker was not ready after {timeout}s; see {log_path}")
