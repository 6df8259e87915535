"""Named parts of a worker's CPU profile: py-spy's collapsed stacks in, shares out.

``py-spy record --subprocesses --format raw`` writes one line per distinct stack: the
frames from the root down, ``;``-separated, then the sample count. With
``--subprocesses`` each stack starts with a ``process PID:"command line"`` frame for the
sampled process (and one for each ancestor process being sampled). A sample is charged
to one named part: the one that names the leaf-most frame of its stack (the first in the
list when several name that frame). Leaf-most because parts nest: the reason codes run
XGBoost's explanation, which runs XGBoost, and Faust's consume path runs under the
micro-batcher; the sample belongs to the most specific of them. A stack no part names
goes to the event loop and threads when it runs in them (waking, task switching), else
to ``other``. Samples of a thread blocked in the kernel are not charged at all
(:data:`IDLE_LEAVES`). A process's start-up (importing modules) is a part of its own,
whatever the imported code runs.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# (part, substrings of a frame "function (file:line)" that name it); see the module doc
Parts = Sequence[tuple[str, Sequence[str]]]

WORKER = "worker (Faust process)"
DECIDER = "decider child"
GNN_REFRESH = "GNN refresh process"
OTHER_PROCESS = "other process"

WORKER_PARTS: Parts = (
    ("replies from the child (pipe, decode, metrics replay)", ("DeciderProcess._read",)),
    ("requests to the child (encode, pipe)", ("DeciderProcess.decide", "_Child.send")),
    ("dedupe (table lookups, changelog)", ("streams/dedupe.py", "ScoringStep._remember")),
    ("decode transactions", ("decode_batch", "fraudstream/wire/decode.py")),
    ("encode decisions", ("record_decisions",)),
    ("deliver (broker acks, input acks, metrics)", ("score_stream.<locals>.deliver",)),
    ("produce (record batches)", ("send_records",)),
    ("micro-batcher", ("streams/batching.py",)),
)
DECIDER_PARTS: Parts = (
    ("features (Redis script round trip)", ("features/online.py",)),
    ("rules (polars, allow/deny lists)", ("models/rules/",)),
    ("XGBoost explanations (reason codes)", ("XGBoostScorer.explain", ".contributions")),
    ("XGBoost", ("models/xgb.py",)),
    ("GNN lookup", ("models/gnn/",)),
    ("isolation forest", ("models/iforest.py",)),
    ("meta-ensemble", ("models/ensemble.py",)),
    ("reasons", ("models/reasons.py",)),
    ("decisions, breakers, routing", ("models/decide.py", "models/breaker.py", "routing.py")),
    ("pipe (decode, encode, metrics events)", ("streams/decider_child.py",)),
)
# A process's start-up: charged before any part, whatever the module imported runs.
IMPORTS = ("start-up (importing modules)", ("(<frozen importlib",))
FAUST = ("Faust, mode and aiokafka machinery", ("(faust/", "(mode/", "(aiokafka/"))
# Charged only when no part names any frame of the stack.
EVENT_LOOP = ("event loop and threads", ("(asyncio/", "(threading.py", "(concurrent/futures/"))
PARTS_BY_KIND: Mapping[str, Parts] = {
    WORKER: (*WORKER_PARTS, FAUST),
    DECIDER: DECIDER_PARTS,
    GNN_REFRESH: (("GNN embeddings (the encoder)", ("models/gnn/",)),),
}
OTHER = "other"
# Leaf frames of a thread blocked in the kernel: waiting in the event loop's select, an
# idle pool thread waiting for work, a pipe or socket read waiting for the other side
# (Redis's own time is Redis's), a lock or condition wait. py-spy's own idle detection
# lets many of these through (over a third of a process's samples in one run), so they
# are dropped here by their leaf.
IDLE_LEAVES = (
    "EpollSelector.select (selectors.py",
    "_worker (concurrent/futures/thread.py",
    "Connection._recv (multiprocessing/connection.py",
    "Connection._poll (multiprocessing/connection.py",
    ".wait (threading.py",
    "_HiredisParser.read_from_socket (redis/",
)

_LOOP_CALLBACK = "Handle._run (asyncio/events.py"
_LOOP_ITSELF = "BaseEventLoop._run_once (asyncio/base_events.py"
_PROCESS_FRAME = re.compile(r'process (\d+):"[^"]*";?')


@dataclass
class ProcessProfile:
    """The samples of one process, by part."""

    pid: int
    kind: str = OTHER_PROCESS
    samples: int = 0  # busy ones: the idle ones are only counted
    idle: int = 0
    parts: Counter[str] = field(default_factory=Counter)

    def shares(self) -> dict[str, float]:
        return {part: n / self.samples for part, n in self.parts.most_common()}


@dataclass(frozen=True)
class Stack:
    pid: int
    frames: tuple[str, ...]  # root first, without the process frames
    count: int


def parse_raw(lines: Iterable[str]) -> list[Stack]:
    """The stacks of py-spy's raw output, each with the process it was sampled in."""
    stacks = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        body, _, count = line.rpartition(" ")
        # The process frames come first, and a command line may hold a ";" itself.
        pid, at = 0, 0
        while (process := _PROCESS_FRAME.match(body, at)) is not None:
            pid, at = int(process.group(1)), process.end()  # the last: the sampled one
        frames = tuple(frame for frame in body[at:].split(";") if frame)
        stacks.append(Stack(pid, frames, int(count)))
    return stacks


def process_kind(pid: int, worker_pid: int, frames: Iterable[str]) -> str:
    """What a sampled process is, from its pid and any frame seen in it."""
    if pid == worker_pid:
        return WORKER
    seen = " ".join(frames)
    if "streams/decider_child.py" in seen:
        return DECIDER
    if "gnn/refresh_process.py" in seen:
        return GNN_REFRESH
    return OTHER_PROCESS


def is_idle(frames: Sequence[str]) -> bool:
    """Whether a sample caught its thread blocked (:data:`IDLE_LEAVES`)."""
    return bool(frames) and any(leaf in frames[-1] for leaf in IDLE_LEAVES)


def part_of(frames: Sequence[str], parts: Parts) -> str:
    """The part a stack is charged to (module doc). On an event loop only the callback
    it runs counts (below ``Handle._run``): the frames above are the same for every
    callback (the loop, and Faust's worker that started it), so they name no part; a
    stack in the loop itself (waiting in ``select``, scheduling) is the loop's."""
    inner = frames
    for at in range(len(frames) - 1, -1, -1):
        if _LOOP_CALLBACK in frames[at]:
            inner = frames[at + 1 :]
            break
    else:
        if any(_LOOP_ITSELF in frame for frame in frames):
            return EVENT_LOOP[0]
    for frame in reversed(inner):
        for part, markers in (IMPORTS, *parts):
            if any(marker in frame for marker in markers):
                return part
    part, markers = EVENT_LOOP  # e.g. the loop calling a callback: Handle._run itself
    return part if any(m in frame for frame in frames for m in markers) else OTHER


def profile(stacks: Sequence[Stack], worker_pid: int) -> dict[int, ProcessProfile]:
    """Samples by process and part; a process's kind is decided from all its stacks."""
    frames_by_pid: dict[int, set[str]] = defaultdict(set)
    for stack in stacks:
        frames_by_pid[stack.pid].update(stack.frames)
    out = {
        pid: ProcessProfile(pid, process_kind(pid, worker_pid, frames))
        for pid, frames in frames_by_pid.items()
    }
    for stack in stacks:
        process = out[stack.pid]
        if is_idle(stack.frames):
            process.idle += stack.count
            continue
        process.samples += stack.count
        process.parts[part_of(stack.frames, PARTS_BY_KIND.get(process.kind, ()))] += stack.count
    return out


def per_decision_us(
    process: ProcessProfile, cpu_seconds: float, decisions: int
) -> dict[str, float]:
    """Each part's CPU per decision: its share of the process's samples times the CPU
    the process used over the span (measured apart from the sampler, which only sees
    the threads that run), per decision made in the span."""
    per = cpu_seconds * 1e6 / max(decisions, 1)
    return {part: share * per for part, share in process.shares().items()}
