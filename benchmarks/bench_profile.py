"""Where one worker's CPU goes at its peak, by named part of the code.

    .venv/bin/python -m benchmarks.bench_profile            # ~2 minutes
    .venv/bin/python -m benchmarks.bench_profile --quick    # ~1 minute

The transactions topic is filled and one engine worker (``fraudstream worker``, the
decider in its child process) drains it, as in the end-to-end benchmark's peak run.
Once the worker is ready and ``--warmup-s`` has passed, py-spy samples the worker's
Faust process and every process under it (the decider child, the GNN refresh) for
``--seconds``, while the CPU time of each of them, of Redis and of the broker is read
at the start and the end of that span. Each sampled stack is charged to a named part
(``benchmarks/profile_parts.py``); a part's share of its process's samples times the
process's CPU time, over the decisions produced in the span, is its CPU per decision.

Output in ``--out``: ``profile.md``, ``profile.json`` and ``profile-stacks.txt`` (the
collapsed stacks, input for a flame graph; not committed). py-spy must be able to
attach to the worker (ptrace: the same user, and ``kernel.yama.ptrace_scope`` 0 or
root); it comes with the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.bench_end_to_end import (
    RESULTS,
    Workers,
    collect,
    ensure_engine_bundle,
    run_env,
    simulated_messages,
    stack_env,
    transaction_ids,
)
from benchmarks.e2e_report import Seen
from benchmarks.profile_parts import ProcessProfile, parse_raw, per_decision_us, profile
from fraudstream.devstack.testing import shared_dev_stack
from fraudstream.settings import load_settings
from streams.replay import produce
from streams.topics import ensure_topics

READY_LINE = "Ready"  # Faust's worker logs it once its agents run
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Span:
    started: float  # wall clock, seconds
    ended: float
    cpu_s: dict[int, float]  # pid -> CPU seconds used over the span
    names: dict[int, str]  # pid -> what it is, for the pids not sampled (Redis, Kafka)


def _cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


def _wait_ready(log: Path, worker: subprocess.Popen[bytes]) -> None:
    give_up = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < give_up:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.returncode}); see {log}")
        if log.exists() and READY_LINE in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise SystemExit(f"the worker was not ready within {READY_TIMEOUT_S:.0f} s; see {log}")


def _sample(
    spy: str, worker_pid: int, seconds: float, hz: int, stacks: Path, services: dict[str, int]
) -> Span:
    """py-spy over the worker's process tree for ``seconds``, with CPU times around it."""
    tree = [worker_pid, *(c.pid for c in psutil.Process(worker_pid).children(recursive=True))]
    watched = tree + list(services.values())
    before, started = _cpu_seconds(watched), time.time()
    command = [spy, "record", "--subprocesses", "--nonblocking", "-r", str(hz)]
    command += ["-d", str(int(seconds)), "-p", str(worker_pid), "-f", "raw", "-o", str(stacks)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    ended, after = time.time(), _cpu_seconds(watched)
    if done.returncode != 0 or not stacks.exists():
        raise SystemExit(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    used = {pid: after[pid] - before[pid] for pid in before if pid in after}
    return Span(started, ended, used, {pid: name for name, pid in services.items()})


def run(args: argparse.Namespace) -> dict[str, object]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: it comes with the dev extra (pip install py-spy)")
    settings = load_settings(None, os.environ)
    base_env = {k: v for k, v in os.environ.items() if k.startswith("FRAUDSTREAM__")}
    messages = simulated_messages(args.transactions, seed=11)
    ensure_engine_bundle(settings)
    logs = args.out / "e2e-logs"
    logs.mkdir(parents=True, exist_ok=True)
    stacks = args.out / "profile-stacks.txt"
    with shared_dev_stack(settings.devstack) as stack:
        services = {role.capitalize(): pid for role, pid in stack_env(stack, base_env).items()}
        env = run_env(base_env, f"profile-{uuid.uuid4().hex[:6]}", 4)
        run_settings = load_settings(None, env)
        asyncio.run(ensure_topics(run_settings.kafka))
        asyncio.run(produce(run_settings.kafka, run_settings.kafka.topics.transactions, messages))
        workers = Workers("engine", 1, env, logs)
        worker, log = workers.procs[0], workers.logs[0]

        async def drain_and_sample() -> tuple[Seen, Span]:
            wanted = transaction_ids(messages)
            collector = asyncio.create_task(collect(run_settings, wanted, timeout_s=120))
            await asyncio.to_thread(_wait_ready, log, worker)
            await asyncio.sleep(args.warmup_s)
            span = await asyncio.to_thread(
                _sample, spy, worker.pid, args.seconds, args.hz, stacks, services
            )
            return (await collector).seen, span

        try:
            seen, span = asyncio.run(drain_and_sample())
        finally:
            workers.stop()
    return summary(seen, span, parse_profile(stacks, worker.pid), len(messages), args)


def parse_profile(stacks: Path, worker_pid: int) -> dict[int, ProcessProfile]:
    with stacks.open() as lines:
        return profile(parse_raw(lines), worker_pid)


def summary(
    seen: Seen,
    span: Span,
    processes: dict[int, ProcessProfile],
    transactions: int,
    args: argparse.Namespace,
) -> dict[str, object]:
    low, high = span.started * 1000, span.ended * 1000
    decisions = sum(1 for stamp, _, _ in seen if low <= stamp <= high)
    stamps = [stamp for stamp, _, _ in seen]
    drain_s = (max(stamps) - min(stamps)) / 1000 if stamps else 0.0
    seconds = span.ended - span.started
    rows: list[dict[str, object]] = []
    for pid, process in sorted(processes.items(), key=lambda kv: -kv[1].samples):
        cpu = span.cpu_s.get(pid, 0.0)
        rows.append(
            {
                "pid": pid,
                "process": process.kind,
                "samples": process.samples,
                "idle_samples": process.idle,
                "cpu_us_per_decision": cpu * 1e6 / max(decisions, 1),
                "parts_us_per_decision": per_decision_us(process, cpu, decisions),
            }
        )
    for pid, name in span.names.items():
        cpu = span.cpu_s.get(pid, 0.0)
        rows.append(
            {"pid": pid, "process": name, "cpu_us_per_decision": cpu * 1e6 / max(decisions, 1)}
        )
    # A drain that ended inside the span would charge the idle tail to nothing.
    ended_early = bool(stamps) and max(stamps) < high
    return {
        "ended_early": ended_early,
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), {platform.python_version()}",
        "transactions": transactions,
        "decided": len(seen),
        "drain_rate": len(seen) / drain_s if drain_s else 0.0,
        "span_s": seconds,
        "span_decisions": decisions,
        "span_rate": decisions / seconds if seconds else 0.0,
        "sampling_hz": args.hz,
        "warmup_s": args.warmup_s,
        "processes": rows,
    }


def report(result: dict[str, object]) -> str:
    rows: list[dict[str, object]] = result["processes"]  # type: ignore[assignment]
    lines = [
        "# Where one worker's CPU goes at its peak",
        "",
        f"Machine: {result['machine']}; Kafka and Redis on the same machine. One engine "
        f"worker (the decider in its child process) drains {result['transactions']:,} "
        f"simulated transactions from a filled topic (4 partitions); py-spy samples its "
        f"processes at {result['sampling_hz']} Hz for {result['span_s']:.0f} s, "
        f"{result['warmup_s']:.0f} s after it is ready, while their CPU time is read. "
        f"Decisions in that span: {result['span_decisions']:,} "
        f"({result['span_rate']:,.0f}/s; the whole drain {result['drain_rate']:,.0f}/s).",
        "",
        *(
            ["**The drain ended inside the sampled span: use more --transactions.**", ""]
            if result["ended_early"]
            else []
        ),
        "Each sampled stack is charged to the most specific named part; samples of a "
        "thread blocked in the kernel (select, a pipe or socket read, an idle pool "
        "thread) are dropped. A part's figure is its share of its process's busy "
        "samples times the CPU time the process used over the span: on a saturated "
        "machine py-spy also samples threads that wait for a core, so busy samples "
        "exceed CPU time.",
        "",
        "Reproduce: `.venv/bin/python -m benchmarks.bench_profile` (part of `make bench`); "
        "the parts are defined in `benchmarks/profile_parts.py`, the collapsed stacks "
        "are in `profile-stacks.txt` (flame graph input).",
        "",
        "## CPU per decision, by process",
        "",
        "| process | pid | µs of CPU per decision | busy samples | idle samples |",
        "|---|---:|---:|---:|---:|",
    ]
    total = 0.0
    for row in rows:
        us = float(row["cpu_us_per_decision"])  # type: ignore[arg-type]
        total += us
        busy, idle = row.get("samples", "-"), row.get("idle_samples", "-")
        lines.append(f"| {row['process']} | {row['pid']} | {us:,.0f} | {busy} | {idle} |")
    lines += [
        f"| **all of these** | | **{total:,.0f}** | | |",
        "",
        f"With every core busy on these alone, {os.cpu_count()} cores would sustain at most "
        f"~{(os.cpu_count() or 1) * 1e6 / max(total, 1):,.0f} decisions/s.",
    ]
    for row in rows:
        parts: dict[str, float] | None = row.get("parts_us_per_decision")  # type: ignore[assignment]
        us = float(row["cpu_us_per_decision"])  # type: ignore[arg-type]
        if not parts or us < 1.0:  # e.g. the GNN refresh, idle between refreshes
            continue
        lines += [
            "",
            f"## {row['process']}: {us:,.0f} µs per decision",
            "",
            "| part | µs per decision | share |",
            "|---|---:|---:|",
        ]
        for part, value in sorted(parts.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {part} | {value:,.1f} | {value / max(us, 1e-9):.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--transactions", type=int, default=150_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--hz", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.transactions, args.seconds, args.warmup_s = 60_000, 8.0, 5.0
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (args.out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (args.out / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
