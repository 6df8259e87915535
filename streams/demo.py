"""``fraudstream demo``: the first command a newcomer runs.

Brings the dev stack up, starts a worker, replays simulated transactions (a few with
defects), and prints the decisions as they arrive plus a summary. The stack is left
running so the topics can be inspected; ``fraudstream devstack down`` stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from fraudstream.settings import Settings
from streams.kafka_config import aiokafka_kwargs
from streams.topics import ensure_topics

DEFECTS = [b"{not json", b'{"schema_version": 42}']


def _demo_messages(count: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    from fraudstream.simulator import SimulatorConfig, generate, to_json_lines

    data = generate(SimulatorConfig(seed=seed, n_cards=300, n_terminals=120, days=2))
    frame = data.transactions.head(count)
    keys = [card.encode() for card in frame["card_id"]]
    messages: list[tuple[bytes | None, bytes]] = list(zip(keys, to_json_lines(frame), strict=True))
    for n, defect in enumerate(DEFECTS):
        messages.insert((n + 1) * len(messages) // (len(DEFECTS) + 1), (None, defect))
    return messages


async def _replay_and_watch(
    settings: Settings, messages: list[tuple[bytes | None, bytes]], console: Console
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    topics = settings.kafka.topics
    kwargs = aiokafka_kwargs(settings.kafka)
    consumer = AIOKafkaConsumer(
        topics.decisions, topics.deadletter, group_id=None, auto_offset_reset="latest", **kwargs
    )
    await consumer.start()
    # Make sure the consumer has its position before anything is produced.
    await consumer.getmany(timeout_ms=200)
    producer = AIOKafkaProducer(acks="all", linger_ms=5, **kwargs)
    await producer.start()
    started = time.monotonic()
    for key, value in messages:
        await producer.send(topics.transactions, value, key=key)
    await producer.flush()
    await producer.stop()

    expected = len(messages) - len(DEFECTS)
    decisions: list[dict[str, Any]] = []
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while (
        len(decisions) < expected or len(letters) < len(DEFECTS)
    ) and time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(timeout_ms=500)).items():
            for record in records:
                value = json.loads(record.value)
                if tp.topic == topics.deadletter:
                    letters.append(value)
                    console.print(
                        f"[yellow]dead letter[/yellow] {value['kind']}: {value['reason'][:70]}"
                    )
                    continue
                decisions.append(value)
                if len(decisions) <= 15 or value["decision"] != "approve":
                    colour = {"approve": "green", "review": "yellow", "decline": "red"}[
                        value["decision"]
                    ]
                    console.print(
                        f"[{colour}]{value['decision']:>7}[/{colour}] {value['transaction_id']} "
                        f"card {value['card_id']} {value['amount']:>9.2f} {value['currency']} "
                        f"score {value['score']:.3f} model {value['model_version']}"
                    )
    await consumer.stop()
    return decisions, letters, time.monotonic() - started


def run_demo(settings: Settings, count: int = 500, seed: int = 7) -> None:
    from fraudstream.devstack import DevStack

    console = Console()
    console.rule("fraudstream demo")
    info = DevStack(settings.devstack).up()
    console.print(f"Kafka at {info.kafka_bootstrap}, Redis at {info.redis_url}")
    asyncio.run(ensure_topics(settings.kafka))

    log_path = Path(settings.devstack.home) / "demo-worker.log"
    console.print(f"starting a worker (log: {log_path})")
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "fraudstream.cli", "worker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        _wait_for_ready(log_path, worker)
        messages = _demo_messages(count, seed)
        console.print(f"replaying {len(messages)} messages ({len(DEFECTS)} deliberately broken)")
        decisions, letters, seconds = asyncio.run(_replay_and_watch(settings, messages, console))
    finally:
        worker.terminate()
        worker.wait(30)

    table = Table(title="summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    for outcome, n in sorted(Counter(d["decision"] for d in decisions).items()):
        table.add_row(f"decision: {outcome}", str(n))
    table.add_row("dead letters", str(len(letters)))
    table.add_row("seconds (produce → last decision)", f"{seconds:.2f}")
    console.print(table)
    console.print("The dev stack is still up; stop it with [bold]fraudstream devstack down[/bold].")


def _wait_for_ready(log_path: Path, worker: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited early; see {log_path}")
        if "Ready" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the worker was not ready after {timeout}s; see {log_path}")
