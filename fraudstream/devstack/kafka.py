"""The dev stack's Kafka broker: jars from Maven Central via ``pom.xml``, single-node KRaft
(one JVM that is both broker and controller), storage formatted once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fraudstream.devstack import procs
from fraudstream.errors import ServiceStartError, ToolMissingError
from fraudstream.settings import DevstackSettings

POM = Path(__file__).with_name("pom.xml")
READY_TOPIC = "__fraudstream_ready"
MAIN_CLASS = "kafka.Kafka"
MIN_JAVA = 17
# Partitions of topics the broker creates on its own (Faust's internal topics and
# anything produced to before it exists); matches [kafka] partitions' default.
AUTO_CREATE_PARTITIONS = 4

Report = Callable[[str], None]


def kafka_version(pom: Path = POM) -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text("utf-8"))
    if match is None:
        raise ServiceStartError("kafka", f"{pom} does not set <kafka.version>")
    return match.group(1).strip()


def jar_cache_dir(cache_root: Path, pom: Path = POM) -> Path:
    """``<cache_root>/kafka-<version>-<pom digest>``: one set of jars per pom, per machine."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    return cache_root / f"kafka-{kafka_version(pom)}-{digest}"


def _complete(root: Path) -> bool:
    marker = root / "complete.json"
    try:
        jars: dict[str, int] = json.loads(marker.read_text("utf-8"))["jars"]
    except (OSError, ValueError, KeyError):
        return False
    lib = root / "lib"
    return bool(jars) and all(
        (lib / n).is_file() and (lib / n).stat().st_size == s for n, s in jars.items()
    )


def resolve_jars(cache_root: Path, report: Report, pom: Path = POM) -> Path:
    """The directory holding the broker's jars, resolved with Maven when not cached yet."""
    root = jar_cache_dir(cache_root, pom)
    if _complete(root):
        return root / "lib"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolMissingError("mvn", "install Maven 3.6.3+ (apt-get install maven)")
    with procs.file_lock(root.with_name(root.name + ".lock")):
        if _complete(root):  # another process resolved them while we waited
            return root / "lib"
        version = kafka_version(pom)
        report(f"kafka: resolving Kafka {version} jars from Maven Central into {root} ...")
        started = time.monotonic()
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pom, root / "pom.xml")
        partial, lib, log = root / "lib.partial", root / "lib", root / "mvn.log"
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            mvn,
            "-q",
            "-B",
            "-ntp",
            "-Dstyle.color=never",
            "-f",
            str(root / "pom.xml"),
            "dependency:copy-dependencies",
            f"-Dkafka.lib.dir={partial}",
        ]
        with log.open("wb") as out:
            rc = subprocess.run(
                argv, cwd=root, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False
            ).returncode
        if rc != 0 or not (partial / f"kafka_2.13-{version}.jar").is_file():
            raise ServiceStartError(
                "kafka", f"mvn could not resolve the jars (exit {rc}):\n{procs.log_tail(log)}", log
            )
        shutil.rmtree(lib, ignore_errors=True)
        partial.rename(lib)
        jars = {p.name: p.stat().st_size for p in sorted(lib.glob("*.jar"))}
        (root / "complete.json").write_text(
            json.dumps({"kafka_version": version, "jars": jars}, indent=1), "utf-8"
        )
        report(f"kafka: {len(jars)} jars resolved in {time.monotonic() - started:.1f} s")
    return lib


def java_binary() -> str:
    """``java`` from PATH, checked to be Java 17 or newer (Kafka 4's minimum)."""
    java = shutil.which("java")
    hint = "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
    if java is None:
        raise ToolMissingError("java", hint)
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is not None:
        major = int(match.group(1))
        major = int(match.group(2) or 0) if major == 1 else major  # "1.8" style
        if major < MIN_JAVA:
            raise ToolMissingError(f"java {MIN_JAVA}+", f"{java} is Java {major}; {hint}")
    return java


def server_properties(
    s: DevstackSettings, data_dir: Path, extra: Mapping[str, str] | None = None
) -> str:
    """The broker's ``server.properties``; ``extra`` adds or replaces entries (the
    security tests run a broker of their own with a SASL_SSL listener this way)."""
    h = s.host
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{h}:{s.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{h}:{s.kafka_port},CONTROLLER://{h}:{s.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{h}:{s.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(AUTO_CREATE_PARTITIONS),
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # On restart the controller still holds the previous run's broker registration
        # until its session expires (9 s by default); a short session makes restarts fast.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "2500",
    }
    lines.update(extra or {})
    head = "# Written by `fraudstream devstack up` on every start; edit [devstack] instead.\n"
    return head + "".join(f"{k}={v}\n" for k, v in lines.items())


def _storage_tool(java: str, lib: Path, *args: str, log: Path) -> str:
    argv = [java, "-cp", f"{lib}/*", "kafka.tools.StorageTool", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    shown = re.sub(r"password=[^,\]]*", "password=***", " ".join(argv))  # --add-scram
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {shown}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise ServiceStartError(
            "kafka", f"StorageTool {args[0]} failed:\n{procs.log_tail(log)}", log
        )
    return done.stdout


def format_storage(
    java: str,
    lib: Path,
    properties: Path,
    data_dir: Path,
    log: Path,
    *,
    extra_args: Sequence[str] = (),
) -> bool:
    """Format the KRaft storage unless it already is; returns whether it formatted.
    ``extra_args`` go to ``StorageTool format`` (e.g. ``--add-scram`` to create SCRAM
    users before the first start)."""
    if (data_dir / "meta.properties").exists():
        return False
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster_id = _storage_tool(java, lib, "random-uuid", log=log).strip().splitlines()[-1]
    _storage_tool(
        java, lib, "format", "-t", cluster_id, "-c", str(properties), *extra_args, log=log
    )
    return True


def broker_argv(java: str, lib: Path, properties: Path, s: DevstackSettings) -> list[str]:
    return [
        java,
        f"-Xmx{s.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dfraudstream.devstack.home={s.home}",
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-cp",
        f"{lib}/*",
        MAIN_CLASS,
        str(properties),
    ]


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs every refused connection while the broker boots; hide that."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def round_trip(
    bootstrap: str, timeout_s: float, client: Mapping[str, Any] | None = None
) -> None:
    """Create the readiness topic (if needed) and send one message through it.
    ``client``: more aiokafka arguments (security protocol, SSL context, SASL)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    ms = max(1000, int(timeout_s * 1000))
    more = dict(client or {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms, **more)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(READY_TOPIC, 1, 1)], timeout_ms=ms)
        for topic, code, *message in response.topic_errors:
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise RuntimeError(f"create topic {topic}: error {code} {message}")
    finally:
        await admin.close()
    token = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=ms, **more
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait(READY_TOPIC, token)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=ms, **more
    )
    await consumer.start()
    try:
        tp = TopicPartition(READY_TOPIC, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        record = await asyncio.wait_for(consumer.getone(tp), timeout_s)
        if record.value != token:
            raise RuntimeError("read back a different message than the one sent")
    finally:
        await consumer.stop()


def wait_ready(
    bootstrap: str,
    pid: int,
    log: Path,
    timeout_s: float,
    *,
    client: Mapping[str, Any] | None = None,
) -> None:
    """Return once a message round-trips through the broker; raise ServiceStartError when
    the broker exits or ``timeout_s`` passes first. ``client``: as for :func:`round_trip`."""
    left = procs.monotonic_deadline(timeout_s)
    last_error = "no answer yet"
    with _quiet_aiokafka():
        while left() > 0:
            code = procs.exit_code(pid)
            if code is not None:
                raise ServiceStartError(
                    "kafka", f"the broker exited with status {code}:\n{procs.log_tail(log)}", log
                )
            try:
                procs.run_sync(lambda: round_trip(bootstrap, min(10.0, max(1.0, left())), client))
                return
            except Exception as exc:  # any failure just means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
    raise ServiceStartError(
        "kafka",
        f"not ready within {timeout_s:g} s (last error: {last_error}):\n{procs.log_tail(log)}",
        log,
    )


def answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """Whether a broker at ``bootstrap`` serves a metadata request."""

    async def probe() -> None:
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
        )
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            await asyncio.wait_for(admin.list_topics(), timeout_s)
        finally:
            await admin.close()

    with _quiet_aiokafka():
        try:
            procs.run_sync(probe)
        except Exception:
            return False
    return True
