"""CPU time by process over a measured span: where a decision's cost goes on the machine.

On a small machine the worker is not alone: the broker, Redis and the benchmark's own
load generator and collector take the same cores. :class:`CpuMeter` samples the CPU
time of each named role (a set of processes and their children) and of the whole
machine in a background thread; :meth:`CpuMeter.between` cuts the span a run measured
(its first to its last decision) out of the samples, so start-up and the idle tail are
not counted. Per decision, that says what a rate would need: ``cores x 10^6 / (µs of
CPU per decision)`` is the most the machine could sustain at full use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import psutil

HARNESS = "load generator + collector"
REST = "rest of machine"
# CPU the hypervisor gave other machines while this one wanted it: not work done here,
# but a run that lost much of it ran slower than the machine can.
STOLEN = "stolen by the hypervisor"
# The roles that a deployment runs too: the benchmark's own load generator and
# collector are left out of the ceiling.
SERVING = ("workers", "kafka", "redis")


@dataclass(frozen=True)
class CpuSample:
    at: float  # wall clock, seconds (the broker's timestamps are wall clock too)
    by_role: dict[str, float]  # CPU seconds used so far by each role's processes
    machine_busy: float  # CPU seconds the whole machine was busy so far
    stolen: float = 0.0  # CPU seconds the hypervisor withheld so far (Linux "steal")


@dataclass(frozen=True)
class CpuSpan:
    """CPU seconds by role (plus :data:`REST` and :data:`STOLEN`) over ``wall_s`` on
    ``cores`` cores."""

    seconds: dict[str, float]
    wall_s: float
    cores: int

    def per_decision_us(self, decisions: int) -> dict[str, float]:
        return {role: s * 1e6 / max(decisions, 1) for role, s in self.seconds.items()}

    @property
    def busy_share(self) -> float:
        """Share of the machine's cores busy over the span."""
        used = sum(s for role, s in self.seconds.items() if role != STOLEN)
        return used / max(self.wall_s * self.cores, 1e-9)


def process_seconds(pids: Iterable[int], seen: dict[int, float], children: bool = True) -> float:
    """CPU seconds of ``pids`` (and their live children); ``seen`` keeps each process's
    last reading, so one that exits keeps counting what it used while sampled."""
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *(root.children(recursive=True) if children else ())]
        except psutil.Error:
            family = []
        for proc in family:
            try:
                times = proc.cpu_times()
                seen[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
    return sum(seen.values())


def machine_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far. Busy is what ran here:
    user (guest time is inside it), nice, system and interrupts."""
    times = psutil.cpu_times()
    busy = (
        times.user
        + times.system
        + sum(getattr(times, name, 0.0) for name in ("nice", "irq", "softirq"))
    )
    return float(busy), float(getattr(times, "steal", 0.0))


class CpuMeter:
    """Samples every ``every_s`` until stopped; ``roles`` name the processes to follow
    (their pids read at each sample, so workers started later are followed too), with
    their children unless the role is in ``alone`` (the benchmark's own process, whose
    children are the workers and maybe the dev stack, metered as roles of their own)."""

    def __init__(
        self,
        roles: Mapping[str, Callable[[], Iterable[int]]],
        every_s: float = 0.25,
        *,
        alone: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._roles = dict(roles)
        self._alone = frozenset(alone)
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()  # the sampling thread and between() both sample
        self._seen: dict[str, dict[int, float]] = {role: {} for role in roles}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self.samples: list[CpuSample] = []

    def __enter__(self) -> CpuMeter:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        with self._lock:
            by_role = {
                role: process_seconds(list(pids()), self._seen[role], role not in self._alone)
                for role, pids in self._roles.items()
            }
            busy, stolen = machine_seconds()
            self.samples.append(CpuSample(self._clock(), by_role, busy, stolen))

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.sample()

    def between(self, start: float, end: float) -> CpuSpan | None:
        """The CPU used from the last sample at or before ``start`` to the first at or
        after ``end`` (a span up to ``every_s`` wider than asked at each end, never
        narrower; sampled now when ``end`` is newer than every sample); None when the
        samples do not reach back to ``start``."""
        if not self.samples or self.samples[-1].at < end:
            self.sample()
        before = [s for s in self.samples if s.at <= start]
        after = [s for s in self.samples if s.at >= end]
        if not before or not after:
            return None
        a, b = before[-1], after[0]
        seconds = {role: b.by_role[role] - a.by_role[role] for role in self._roles}
        seconds[REST] = max(0.0, (b.machine_busy - a.machine_busy) - sum(seconds.values()))
        seconds[STOLEN] = b.stolen - a.stolen
        return CpuSpan(seconds, b.at - a.at, psutil.cpu_count() or 1)


def ceiling_per_s(per_decision_us: Mapping[str, float], cores: int) -> float:
    """Decisions per second the machine could sustain at full use, given what the
    serving roles (:data:`SERVING`) spend per decision."""
    serving = sum(per_decision_us.get(role, 0.0) for role in SERVING)
    return cores * 1e6 / serving if serving > 0 else 0.0


def cpu_table(
    rows: Iterable[tuple[str, float, Mapping[str, float], float]], cores: int
) -> list[str]:
    """Markdown rows, one per (run label, decisions/s, µs of CPU per decision by role,
    machine busy share), with the ceiling the serving roles' cost implies."""
    roles = [*SERVING, HARNESS, REST, STOLEN]
    lines = [
        "| run | decisions/s | "
        + " | ".join(f"{role} µs" for role in roles)
        + " | machine busy | ceiling at full use /s |",
        "|---|---:|" + "---:|" * len(roles) + "---:|---:|",
    ]
    for label, rate, per_decision, busy in rows:
        if not per_decision:
            continue
        lines.append(
            f"| {label} | {rate:,.0f} | "
            + " | ".join(f"{per_decision.get(role, 0.0):,.0f}" for role in roles)
            + f" | {busy:.0%} | {ceiling_per_s(per_decision, cores):,.0f} |"
        )
    return lines if len(lines) > 2 else []
