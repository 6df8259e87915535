"""The profile's attribution: py-spy's stacks to processes and named parts."""

from __future__ import annotations

import pytest

from benchmarks.profile_parts import (
    DECIDER,
    DECIDER_PARTS,
    EVENT_LOOP,
    FAUST,
    GNN_REFRESH,
    IMPORTS,
    OTHER,
    PARTS_BY_KIND,
    WORKER,
    ProcessProfile,
    parse_raw,
    part_of,
    per_decision_us,
    profile,
)

WORKER_CMD = 'process 100:"/venv/bin/python -m fraudstream.cli worker"'
CHILD_CMD = 'process 101:"/venv/bin/python -B -c from multiprocessing.spawn import spawn_main; x"'
LOOP = (
    "run_worker (streams/worker.py:300)",
    "Worker.execute_from_commandline (mode/worker.py:279)",
    "BaseEventLoop.run_forever (asyncio/base_events.py:608)",
    "BaseEventLoop._run_once (asyncio/base_events.py:1922)",
)
CALLBACK = (*LOOP, "Handle._run (asyncio/events.py:80)")
EXPLAIN = (
    "Thread._bootstrap (threading.py:1002)",
    "_worker (concurrent/futures/thread.py:83)",
    "RoutedDecider._first (streams/routing.py:210)",
    "ScoringEngine.decide (models/decide.py:200)",
    "layer_explanations (models/reasons.py:60)",
    "XGBoostScorer.explain (models/xgb.py:300)",
    "XGBoostScorer.contributions (models/xgb.py:320)",
    "Booster.predict (xgboost/core.py:2716)",
)


def line(*frames: str, count: int = 1) -> str:
    return ";".join(frames) + f" {count}\n"


def test_a_stack_belongs_to_the_last_process_frame_and_a_command_line_may_hold_a_semicolon() -> (
    None
):
    stacks = parse_raw(
        [
            line(WORKER_CMD, "main (fraudstream/cli.py:9)", count=7),
            line(WORKER_CMD, CHILD_CMD, "serve (streams/decider_child.py:200)", count=3),
            "\n",
        ]
    )
    assert [(s.pid, s.frames, s.count) for s in stacks] == [
        (100, ("main (fraudstream/cli.py:9)",), 7),
        (101, ("serve (streams/decider_child.py:200)",), 3),
    ]


def test_the_part_naming_the_leaf_most_frame_wins() -> None:
    # Reasons run the explanation, which runs XGBoost: the explanation is the most
    # specific part, though "XGBoost" and "reasons" name frames of the stack too.
    assert part_of(EXPLAIN, DECIDER_PARTS) == "XGBoost explanations (reason codes)"
    assert part_of(EXPLAIN[:5], DECIDER_PARTS) == "reasons"
    assert part_of(EXPLAIN[:4], DECIDER_PARTS) == "decisions, breakers, routing"


def test_on_an_event_loop_only_the_callback_counts() -> None:
    worker_parts = PARTS_BY_KIND[WORKER]
    deliver = (
        *CALLBACK,
        "score_stream.<locals>.deliver (streams/scoring_loop.py:140)",
        "acknowledged (streams/scoring_loop.py:170)",
        "wait (asyncio/tasks.py:427)",
    )
    assert part_of(deliver, worker_parts) == "deliver (broker acks, input acks, metrics)"
    # Faust's worker frames above the loop name no part: the loop's own work is the loop's.
    assert (
        part_of((*LOOP, "EpollSelector.select (selectors.py:468)"), worker_parts) == (EVENT_LOOP[0])
    )
    assert (
        part_of((*CALLBACK, "Task.__step (asyncio/tasks.py:267)"), worker_parts) == (EVENT_LOOP[0])
    )
    assert part_of(CALLBACK, worker_parts) == EVENT_LOOP[0]  # calling the callback
    consume = (
        *CALLBACK,
        "EventBatcher._read (streams/batching.py:90)",
        "Stream.events (faust/streams.py:1180)",
        "Consumer._drain_messages (faust/transport/consumer.py:1201)",
    )
    assert part_of(consume, worker_parts) == FAUST[0]
    assert part_of(consume[:-2], worker_parts) == "micro-batcher"


def test_start_up_imports_are_their_own_part_and_unknown_stacks_are_other() -> None:
    importing = (
        "_start_child (models/gnn/refresh_process.py:122)",
        "_find_and_load (<frozen importlib._bootstrap>:1176)",
        "<module> (models/gnn/training.py:22)",
        "_find_and_load (<frozen importlib._bootstrap>:1176)",
        "<module> (torch/__init__.py:1)",
    )
    assert part_of(importing, PARTS_BY_KIND[GNN_REFRESH]) == IMPORTS[0]
    assert part_of(("somewhere (elsewhere.py:1)",), DECIDER_PARTS) == OTHER


def test_processes_get_their_kind_from_any_stack_and_their_samples_by_part() -> None:
    stacks = parse_raw(
        [
            line(WORKER_CMD, *LOOP, "EpollSelector.select (selectors.py:468)", count=5),
            line(WORKER_CMD, CHILD_CMD, *EXPLAIN, count=6),
            line(WORKER_CMD, CHILD_CMD, "serve (streams/decider_child.py:200)", count=2),
            line(
                WORKER_CMD,
                'process 102:"python -c spawn_main"',
                "_process_worker (concurrent/futures/process.py:240)",
                "refresh (models/gnn/refresh_process.py:60)",
                count=4,
            ),
        ]
    )
    processes = profile(stacks, worker_pid=100)
    assert {pid: p.kind for pid, p in processes.items()} == {
        100: WORKER,
        101: DECIDER,
        102: GNN_REFRESH,
    }
    child = processes[101]
    assert child.samples == 8
    assert child.shares() == {
        "XGBoost explanations (reason codes)": pytest.approx(0.75),
        "pipe (decode, encode, metrics events)": pytest.approx(0.25),
    }
    assert processes[102].parts == {"GNN embeddings (the encoder)": 4}


def test_samples_of_a_blocked_thread_are_counted_idle_not_charged() -> None:
    stacks = parse_raw(
        [
            line(WORKER_CMD, *LOOP, "EpollSelector.select (selectors.py:468)", count=5),
            line(WORKER_CMD, "Thread._bootstrap (threading.py:1002)",
                 "_worker (concurrent/futures/thread.py:81)", count=4),
            line(WORKER_CMD, *CALLBACK, "decode_batch (streams/scoring.py:110)", count=3),
        ]
    )  # fmt: skip
    worker = profile(stacks, worker_pid=100)[100]
    assert (worker.samples, worker.idle) == (3, 9)
    assert worker.shares() == {"decode transactions": 1.0}


def test_a_parts_cost_per_decision_is_its_share_of_the_process_cpu() -> None:
    process = ProcessProfile(1, WORKER, samples=4)
    process.parts.update({"a": 3, "b": 1})
    # 0.5 CPU seconds over 1,000 decisions: 500 µs each, split 3:1.
    costs = per_decision_us(process, cpu_seconds=0.5, decisions=1_000)
    assert costs == {"a": pytest.approx(375.0), "b": pytest.approx(125.0)}
    assert sum(costs.values()) == pytest.approx(500.0)
