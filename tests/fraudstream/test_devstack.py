"""The dev stack against real processes: a broker and a Redis of their own (own home
under tmp_path, own free ports) for the lifecycle tests, the session stack for the
round trip. No mocks of Kafka or Redis."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from fraudstream.devstack import DevStack, StackInfo
from fraudstream.devstack.procs import ProcessRecord, port_in_use
from fraudstream.devstack.testing import TestStack, free_ports
from fraudstream.errors import PortInUseError, ServiceStartError
from fraudstream.settings import DevstackSettings

pytestmark = pytest.mark.integration


def _own_settings(home: Path, **ports: int) -> DevstackSettings:
    kafka_port, controller_port, redis_port = free_ports(3)
    values = {
        "kafka_port": kafka_port,
        "kafka_controller_port": controller_port,
        "redis_port": redis_port,
        **ports,
    }
    return DevstackSettings(home=home, start_timeout_s=90, **values)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevStack, StackInfo]]:
    """A dev stack of this module's own; the last test takes it down."""
    stack = DevStack(_own_settings(tmp_path_factory.mktemp("devstack")))
    info = stack.up()
    yield stack, info
    stack.down(purge=True)


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[bytes]]:
    """A process the dev stack did not start."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()


def test_up_starts_both_and_a_second_up_is_a_no_op(own: tuple[DevStack, StackInfo]) -> None:
    stack, first = own
    assert set(first.started) == {"kafka", "redis"}
    assert _alive(first.kafka_pid) and _alive(first.redis_pid)
    second = stack.up()
    assert second.already_running
    assert (second.kafka_pid, second.redis_pid) == (first.kafka_pid, first.redis_pid)
    assert second.kafka_bootstrap == f"127.0.0.1:{stack.settings.kafka_port}"
    assert second.redis_url == f"redis://127.0.0.1:{stack.settings.redis_port}/0"
    assert (stack.home / "kafka" / "data" / "meta.properties").is_file()
    assert int((stack.home / "kafka" / "broker.pid").read_text()) == first.kafka_pid


def test_status_reports_both(own: tuple[DevStack, StackInfo]) -> None:
    stack, info = own
    status = stack.status()
    assert status.all_running
    assert (status["kafka"].pid, status["redis"].pid) == (info.kafka_pid, info.redis_pid)
    assert status["kafka"].answers and status["redis"].answers
    assert status["kafka"].address == info.kafka_bootstrap


def test_status_command_exit_codes(own: tuple[DevStack, StackInfo], tmp_path: Path) -> None:
    from fraudstream.cli import app

    stack, info = own
    env = {
        "FRAUDSTREAM__DEVSTACK__HOME": str(stack.home),
        "FRAUDSTREAM__DEVSTACK__KAFKA_PORT": str(stack.settings.kafka_port),
        "FRAUDSTREAM__DEVSTACK__KAFKA_CONTROLLER_PORT": str(stack.settings.kafka_controller_port),
        "FRAUDSTREAM__DEVSTACK__REDIS_PORT": str(stack.settings.redis_port),
    }
    result = CliRunner().invoke(app, ["devstack", "status"], env=env)
    assert result.exit_code == 0, result.output
    assert str(info.kafka_pid) in result.output and str(info.redis_pid) in result.output

    stopped = _own_settings(tmp_path / "empty")
    env = {
        "FRAUDSTREAM__DEVSTACK__HOME": str(stopped.home),
        "FRAUDSTREAM__DEVSTACK__KAFKA_PORT": str(stopped.kafka_port),
        "FRAUDSTREAM__DEVSTACK__KAFKA_CONTROLLER_PORT": str(stopped.kafka_controller_port),
        "FRAUDSTREAM__DEVSTACK__REDIS_PORT": str(stopped.redis_port),
    }
    result = CliRunner().invoke(app, ["devstack", "status"], env=env)
    assert result.exit_code == 3, result.output
    assert "stopped" in result.output


@pytest.mark.parametrize(
    ("service", "setting"),
    [("kafka", "kafka_port"), ("kafka", "kafka_controller_port"), ("redis", "redis_port")],
)
def test_port_held_by_a_foreign_listener_is_named(
    tmp_path: Path, service: str, setting: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        stack = DevStack(_own_settings(tmp_path / "home", **{setting: port}))
        with pytest.raises(PortInUseError) as caught:
            stack.up()
    assert (caught.value.service, caught.value.port) == (service, port)
    assert f"port {port}" in str(caught.value)
    assert not (tmp_path / "home" / "state.json").exists()  # nothing was started


def test_a_broker_that_cannot_start_is_reported_and_nothing_is_left_running(
    tmp_path: Path,
) -> None:
    settings = _own_settings(tmp_path / "home").model_copy(update={"kafka_heap": "1k"})
    stack = DevStack(settings)
    with pytest.raises(ServiceStartError) as caught:
        stack.up()
    assert caught.value.service == "kafka"
    assert caught.value.log_path == tmp_path / "home" / "kafka" / "broker.log"
    assert "heap" in str(caught.value)  # the log's last lines are in the message
    assert not stack.state_file.exists()  # redis, started by the same up, was stopped
    assert not port_in_use("127.0.0.1", settings.redis_port)


def test_down_never_signals_a_reused_pid(tmp_path: Path, foreign: subprocess.Popen[bytes]) -> None:
    """state.json names a pid that now belongs to another process (different start time)."""
    stack = DevStack(_own_settings(tmp_path / "home"))
    stack.home.mkdir(parents=True)
    created = psutil.Process(foreign.pid).create_time()
    record = ProcessRecord(foreign.pid, created - 100.0, (sys.executable,), "x.log")
    entry = {"process": record.to_json(), "ports": [stack.settings.redis_port]}
    stack.state_file.write_text(json.dumps({"host": "127.0.0.1", "services": {"redis": entry}}))
    assert not stack.status()["redis"].running
    assert stack.down() == []
    assert foreign.poll() is None
    assert not stack.state_file.exists()


def test_the_broker_round_trips_a_message(stack: TestStack) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"devstack-test.{uuid.uuid4().hex[:10]}"  # auto-created by the broker

    async def round_trip() -> bytes | None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=stack.kafka_bootstrap,
            auto_offset_reset="earliest",
            group_id=f"devstack-test-{uuid.uuid4().hex[:8]}",
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
            return record.value
        finally:
            await consumer.stop()

    assert asyncio.run(round_trip()) == b"hello"


def test_redis_answers(redis_client: Callable[..., Any]) -> None:
    client = redis_client()
    client.set("devstack-test", "1")
    assert client.get("devstack-test") == b"1"


def test_down_stops_exactly_our_pids_and_keeps_the_data(
    own: tuple[DevStack, StackInfo], foreign: subprocess.Popen[bytes]
) -> None:
    stack, info = own
    meta = stack.home / "kafka" / "data" / "meta.properties"
    cluster_id = meta.read_text()
    assert sorted(stack.down()) == ["kafka", "redis"]
    assert not _alive(info.kafka_pid) and not _alive(info.redis_pid)
    assert foreign.poll() is None  # untouched
    assert not stack.state_file.exists()
    assert not (stack.home / "kafka" / "broker.pid").exists()
    s = stack.settings
    assert not any(
        port_in_use(s.host, p) for p in (s.kafka_port, s.kafka_controller_port, s.redis_port)
    )
    assert stack.down() == []  # nothing left to stop
    assert not stack.status().all_running

    again = stack.up()  # same storage: not formatted a second time
    assert set(again.started) == {"kafka", "redis"}
    assert meta.read_text() == cluster_id
    stack.down(purge=True)
    assert not (stack.home / "kafka").exists()


def test_make_settings_gives_each_call_its_own_names(
    stack: TestStack, make_settings: Callable[..., Any]
) -> None:
    one, env = make_settings(with_env=True, scoring__max_batch_size=64)
    two = make_settings()
    assert one.kafka.bootstrap_servers == stack.bootstrap_servers
    assert one.scoring.max_batch_size == 64 and env["FRAUDSTREAM__SCORING__MAX_BATCH_SIZE"] == "64"
    assert one.kafka.topics.transactions != two.kafka.topics.transactions
    assert one.worker.app_id != two.worker.app_id
    assert one.redis.url == two.redis.url != stack.redis_url  # the session's own DB
