"""Decide a batch with the champion, and the challenger in shadow or on the canary.

:class:`RoutedDecider` is what the scoring agent calls once per micro-batch:

1. models staged by the registry watcher are swapped in (between batches, after the
   previous batch's late work, if any, is done);
2. in a worker thread: the rollout for this batch is read, features are fetched once
   (transaction-only features when the store is down), and the champion decides every
   transaction under the deadline (``scoring.deadline_ms``); past it, the configured
   default is emitted, as by :class:`streams.scoring.DeadlineDecider`. A decision's
   ``decided_at`` (and ``latency_ms``) counts the feature lookup and the model's own
   scoring, as with :class:`models.decide.EnginePipeline`;
3. with a challenger, in a second thread, within what is left of the deadline: it
   decides every transaction (``shadow = true``) or only the canary ones. Its failure,
   its slowness or a late run still going never change or delay the champion's
   decisions: the challenger is skipped or its answer dropped instead;
4. :func:`route`: a canary transaction gets the challenger's decision (unless the
   challenger did not really decide it: a timeout or engine-error default) and the
   champion's goes to shadow; every other transaction gets the champion's, and the
   challenger's goes to shadow. The shadow decisions are taken by the agent with
   :meth:`RoutedDecider.take_shadow` and produced to ``decisions.shadow``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from features.matrix import FeatureMatrix
from fraudstream.settings import ScoringSettings
from fraudstream.wire import Decision, Transaction, encode
from models.base import ScoringBatch
from models.decide import Clock, Deadline
from models.decisions import fallback_decisions
from streams.hotswap import LiveModel, ModelSet, Swap
from streams.rollout import RolloutPlan, canary_mask
from streams.scoring import Outgoing, wait_for_straggler


class Rollout(Protocol):
    def current(self) -> RolloutPlan: ...


class RoutingHooks(Protocol):
    """What the decider reports (logged by the worker; metrics to come)."""

    def batch_routed(self, champion: int, canary: int, shadow: int) -> None: ...

    def challenger_failed(self, reason: str, error: BaseException | None) -> None: ...

    def models_swapped(self, swaps: Sequence[Swap]) -> None: ...


class NoRoutingHooks:
    def batch_routed(self, champion: int, canary: int, shadow: int) -> None:
        return None

    def challenger_failed(self, reason: str, error: BaseException | None) -> None:
        return None

    def models_swapped(self, swaps: Sequence[Swap]) -> None:
        return None


def subset(batch: ScoringBatch, rows: Sequence[int]) -> ScoringBatch:
    if len(rows) == len(batch):
        return batch
    features = FeatureMatrix(batch.features.names, batch.features.values[list(rows)])
    chosen = [batch.transactions[i] for i in rows]
    return ScoringBatch(chosen, features, batch.features_degraded)


def really_decided(decision: Decision) -> bool:
    """False for a default emitted because the engine timed out or failed."""
    return not decision.timeout_default and bool(decision.layers_run)


@dataclass
class Routed:
    live: list[Decision]
    shadow: list[Decision] = field(default_factory=list)
    canary: int = 0  # live decisions made by the challenger


def route(
    champion: Sequence[Decision], challenger: Mapping[int, Decision], canary: Sequence[bool]
) -> Routed:
    """Live and shadow decisions of a batch (see the module doc); ``challenger`` maps a
    row to the challenger's decision, for the rows it decided."""
    out = Routed(live=[])
    for row, ours in enumerate(champion):
        theirs = challenger.get(row)
        if theirs is not None and canary[row] and really_decided(theirs):
            out.live.append(theirs)
            out.shadow.append(ours)
            out.canary += 1
        else:
            out.live.append(ours)
            if theirs is not None:
                out.shadow.append(theirs)
    return out


@dataclass(frozen=True)
class _First:
    plan: RolloutPlan
    batch: ScoringBatch
    decisions: list[Decision]
    featured_at: datetime  # the batch's start plus its feature lookup


class RoutedDecider:
    """Champion, challenger and canary under one deadline (see the module doc)."""

    def __init__(
        self,
        models: ModelSet,
        features: Callable[[Sequence[Transaction]], ScoringBatch],
        rollout: Rollout,
        scoring: ScoringSettings,
        *,
        timeout_s: float,
        hooks: RoutingHooks | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.models = models
        self.timeout_s = timeout_s
        self._clock = clock
        self._features = features
        self._rollout = rollout
        self._scoring = scoring
        self._hooks: RoutingHooks = hooks or NoRoutingHooks()
        self._on_error = on_error
        self._late: asyncio.Future[_First] | None = None
        self._challenger_late: asyncio.Future[list[Decision]] | None = None
        self._shadow: list[Outgoing] = []
        self._shadow_lock = threading.Lock()

    async def decide(
        self, transactions: Sequence[Transaction], now: datetime, *, budget_s: float | None = None
    ) -> list[Decision]:
        """The live decisions, one per transaction in order; the shadow ones wait for
        :meth:`take_shadow`. ``budget_s``: what is left of the deadline, when less than
        ``timeout_s`` (a batch that waited before reaching this decider)."""
        routed = await self.decide_routed(transactions, now, budget_s=budget_s)
        shadow = [Outgoing(d.card_id.encode(), encode(d)) for d in routed.shadow]
        with self._shadow_lock:
            self._shadow = shadow  # only the last batch's: never grows, never repeats
        return routed.live

    def take_shadow(self) -> list[Outgoing]:
        """The shadow decisions of the last batch decided (once), encoded, keyed by card."""
        with self._shadow_lock:
            taken, self._shadow = self._shadow, []
        return taken

    async def decide_routed(
        self, transactions: Sequence[Transaction], now: datetime, *, budget_s: float | None = None
    ) -> Routed:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + (self.timeout_s if budget_s is None else budget_s)
        if self._late is not None and not await wait_for_straggler(self._late, self.timeout_s):
            self._late = None
        swaps = self.models.swap_in()  # between batches, and only here
        if swaps:
            self._hooks.models_swapped(swaps)
        champion, challenger = self.models.champion, self.models.challenger
        remaining = give_up_at - loop.time()
        if remaining <= 0:
            return Routed(self._default(champion, transactions, now, True))
        job = asyncio.ensure_future(
            asyncio.to_thread(self._first, champion, transactions, now, remaining * 1000.0)
        )
        try:
            first = await asyncio.wait_for(asyncio.shield(job), remaining)
        except TimeoutError:
            self._late = job
            job.add_done_callback(self._finished_late)
            return Routed(self._default(champion, transactions, now, True))
        except Exception as exc:  # a bug must not stop the stream
            self._report(exc)
            return Routed(self._default(champion, transactions, now, False))
        routed = await self._with_challenger(challenger, first, give_up_at)
        self._hooks.batch_routed(
            len(routed.live) - routed.canary, routed.canary, len(routed.shadow)
        )
        return routed

    def _first(
        self,
        champion: LiveModel,
        transactions: Sequence[Transaction],
        now: datetime,
        budget_ms: float,
    ) -> _First:
        started = self._clock()
        deadline = Deadline.after_ms(budget_ms)
        plan = self._rollout.current()
        batch = self._features(transactions)
        # The feature lookup is part of deciding: the engine adds its own scoring time
        # to the ``now`` it is given, so without this a decision's decided_at and
        # latency_ms would leave out the largest part of the step (the Redis script).
        featured_at = now + timedelta(seconds=self._clock() - started)
        return _First(plan, batch, champion.decide(batch, featured_at, deadline), featured_at)

    async def _with_challenger(
        self, challenger: LiveModel | None, first: _First, give_up_at: float
    ) -> Routed:
        plan, batch = first.plan, first.batch
        ids = [t.transaction_id for t in batch.transactions]
        canary = canary_mask(ids, plan.canary_share) if challenger is not None else []
        rows = list(range(len(ids))) if plan.shadow else [i for i, c in enumerate(canary) if c]
        if challenger is None or not rows:
            return Routed(first.decisions)
        # The challenger's decided_at: the same feature lookup plus its own scoring (what
        # it would take live), not the champion's time before it.
        part = subset(batch, rows)
        theirs = await self._challenger_decides(challenger, part, first.featured_at, give_up_at)
        if theirs is None:
            return Routed(first.decisions)
        return route(first.decisions, dict(zip(rows, theirs, strict=True)), canary)

    async def _challenger_decides(
        self, challenger: LiveModel, part: ScoringBatch, now: datetime, give_up_at: float
    ) -> list[Decision] | None:
        """The challenger's decisions of ``part``, or None (reported) when it is still
        busy with an earlier batch, out of time, or failed."""
        if self._challenger_late is not None and not self._challenger_late.done():
            self._hooks.challenger_failed("busy", None)  # still on an earlier batch
            return None
        self._challenger_late = None
        loop = asyncio.get_running_loop()
        remaining = give_up_at - loop.time()
        if remaining <= 0:
            self._hooks.challenger_failed("no_budget", None)
            return None
        job = asyncio.ensure_future(
            asyncio.to_thread(challenger.decide, part, now, Deadline.after_ms(remaining * 1000.0))
        )
        try:
            theirs = await asyncio.wait_for(asyncio.shield(job), remaining)
        except TimeoutError as exc:
            self._challenger_late = job
            job.add_done_callback(self._challenger_finished)
            self._hooks.challenger_failed("timeout", exc)
            return None
        except Exception as exc:
            self._hooks.challenger_failed("error", exc)
            return None
        if len(theirs) != len(part):
            wrong = AssertionError(
                f"the challenger returned {len(theirs)} decisions for {len(part)}"
            )
            self._hooks.challenger_failed("error", wrong)
            return None
        return theirs

    def _default(
        self,
        champion: LiveModel,
        transactions: Sequence[Transaction],
        now: datetime,
        timed_out: bool,
    ) -> list[Decision]:
        version = champion.model_version
        return fallback_decisions(
            transactions, self._scoring, now, timed_out=timed_out, model_version=version
        )

    def _report(self, error: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(error)

    def _finished_late(self, task: asyncio.Future[_First]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._report(task.exception())  # type: ignore[arg-type]

    def _challenger_finished(self, task: asyncio.Future[list[Decision]]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._hooks.challenger_failed("error", task.exception())
