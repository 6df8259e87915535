"""The CPU meter on real processes: what a role used over a span, children included."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from benchmarks.cpu_meter import REST, STOLEN, CpuMeter, CpuSpan, ceiling_per_s

BURN = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass\n"
# A parent that sleeps while its child burns, then waits for it.
PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', {burn!r}])\n"
    "child.wait()\n"
    "time.sleep(30)\n"
)


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def run_python(started: list[subprocess.Popen[bytes]], code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code])
    started.append(proc)
    return proc


def test_a_busy_role_is_charged_its_cpu_and_an_idle_one_none(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    busy = run_python(spawn, BURN.format(s=1.5))
    idle = run_python(spawn, "import time; time.sleep(30)")
    with CpuMeter({"busy": lambda: [busy.pid], "idle": lambda: [idle.pid]}, every_s=0.1) as m:
        start = time.time()
        time.sleep(1.0)
        end = time.time()
    span = m.between(start, end)
    assert span is not None and span.wall_s >= end - start
    # A spinning process uses about one core; the shared machine may slow it down.
    assert 0.25 * span.wall_s < span.seconds["busy"] <= 1.05 * span.wall_s + 0.05
    assert span.seconds["idle"] < 0.05
    assert span.seconds[REST] >= 0.0 and span.seconds[STOLEN] >= 0.0
    assert 0.0 < span.busy_share <= 1.0
    per = span.per_decision_us(1000)
    assert per["busy"] == pytest.approx(span.seconds["busy"] * 1000.0)


def test_children_count_for_their_parent_even_after_they_exit(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    parent = run_python(spawn, PARENT.format(burn=BURN.format(s=0.8)))
    with CpuMeter({"parent": lambda: [parent.pid]}, every_s=0.05) as meter:
        start = time.time()
        time.sleep(1.6)  # the child burns ~0.8 s, then exits; the parent sleeps on
        end = time.time()
    span = meter.between(start, end)
    assert span is not None
    assert span.seconds["parent"] > 0.3  # the child's burn, kept after it exited


def test_a_role_metered_alone_is_not_charged_its_childrens_cpu(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    # The benchmark's own process is the parent of the workers it meters separately.
    parent = run_python(spawn, PARENT.format(burn=BURN.format(s=0.8)))
    roles = {"family": lambda: [parent.pid], "alone": lambda: [parent.pid]}
    with CpuMeter(roles, every_s=0.05, alone=["alone"]) as meter:
        start = time.time()
        time.sleep(1.2)
        end = time.time()
    span = meter.between(start, end)
    assert span is not None
    assert span.seconds["family"] > 0.3 and span.seconds["alone"] < 0.1


def test_a_span_ending_after_the_last_sample_is_sampled_at_once() -> None:
    # The collector finishes just after the last decision, before the next sample.
    with CpuMeter({}, every_s=60.0) as meter:
        start = time.time()
        time.sleep(0.05)
        assert meter.between(start, time.time()) is not None


def test_a_span_the_samples_do_not_cover_has_no_figures() -> None:
    with CpuMeter({}, every_s=0.05) as meter:
        time.sleep(0.1)
    first, last = meter.samples[0].at, meter.samples[-1].at
    assert meter.between(first - 10.0, last) is None
    assert meter.between(first, last + 10.0) is None
    assert meter.between(first, last) is not None


def test_the_ceiling_counts_only_what_a_deployment_runs() -> None:
    per = {"workers": 250.0, "kafka": 150.0, "redis": 100.0, "load generator + collector": 500.0}
    assert ceiling_per_s(per, cores=2) == pytest.approx(4000.0)
    assert ceiling_per_s({}, cores=2) == 0.0


def test_time_the_hypervisor_withheld_is_shown_but_not_counted_as_busy() -> None:
    span = CpuSpan({"workers": 1.0, REST: 0.2, STOLEN: 0.6}, wall_s=1.0, cores=2)
    assert span.busy_share == pytest.approx(0.6)  # (1.0 + 0.2) of 2 core-seconds
    assert span.per_decision_us(1000)[STOLEN] == pytest.approx(600.0)
