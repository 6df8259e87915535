"""The reconciler: authorisations and settlements in, reconciliation exceptions out.

A pure, deterministic state machine over event time. Each payment (transaction id) has a
:class:`~fraudstream.reconcile.state.TxState`; a watermark (the latest event time seen,
never wall time) drives its deadlines. ``on_authorization``, ``on_settlement`` and
``advance`` each return the exceptions they found, in a deterministic order.

Matching, as the simulator's clearing (``fraudstream.simulator.clearing``) defines it:

* ``capture`` must equal the authorised amount within ``amount_tolerance``;
  ``tip_adjusted`` may exceed it by up to ``max_tip_share``; ``partial_capture`` rows
  add up and complete the payment when they reach the authorised amount (more is an
  ``amount_mismatch``). Any of these in another currency is a ``currency_mismatch``.
* A capture after the payment was fully captured is a ``duplicate_settlement`` when it
  repeats the authorised amount, an ``amount_mismatch`` (over-capture) otherwise.
* A non-refund settlement of a declined authorisation is ``settled_while_declined``
  (the amount checks still run: a declined payment can also be over-captured).
* Refunds cite the original payment and are fine up to the captured total (up to the
  authorised amount while it is only partly captured: a split shipment may be refunded
  before its last part settles); beyond, and before anything was captured at all,
  ``refund_exceeds_capture``.
* A settlement whose authorisation has not arrived ``orphan_grace_hours`` after it is
  ``settlement_without_authorization``; if the authorisation comes later it still matches.
* An approved authorisation with nothing captured ``settle_window_hours`` after the
  payment is ``authorization_not_settled``. A partly captured one is closed silently at
  that point (the unshipped remainder is released, as issuers do).
* Repeats of an authorisation (same transaction id) or settlement (same settlement id)
  are redeliveries (the topics are at-least-once) and change nothing.

A payment is *open* while it waits for something (captures, or its authorisation) and
*closed* otherwise; ``Totals.open == opened - closed`` at all times. A closed payment is
forgotten ``retention_days`` after the last event that touched it, so memory is bounded
by the traffic of one retention period.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fraudstream.reconcile.config import ReconcileConfig
from fraudstream.reconcile.state import (
    SettlementView,
    Snapshot,
    Totals,
    TxState,
    auth_view,
    from_ms,
    settlement_view,
    snapshot_from_builtins,
    to_builtins,
    to_ms,
)
from fraudstream.wire.schemas import (
    SCHEMA_VERSION,
    Authorization,
    ExceptionKind,
    ReconciliationException,
    Settlement,
)

Found = list[ReconciliationException]
Report = Callable[[ExceptionKind, str], None]


@dataclass(slots=True)
class Changes:
    """What changed since the last :meth:`Reconciler.take_changes`: states to store (as
    plain dicts) and transaction ids to delete, for a write-through durable table."""

    upserts: dict[str, Any] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(self, config: ReconcileConfig, snapshot: Snapshot | None = None) -> None:
        self._cfg = config
        self._tol = config.tolerance_cents
        self._wm = 0  # deadlines fire up to here: the lower of the two inputs' event times
        self._seen_auth = 0  # latest authorisation event time seen
        self._seen_stl = 0  # latest settlement time seen
        self._totals = Totals()
        self._states: dict[str, TxState] = {}
        self._timers: list[tuple[int, str]] = []  # (when, transaction id); stale ones skipped
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        if snapshot is not None:
            self._wm = snapshot.watermark_ms
            self._seen_auth = snapshot.authorizations_ms or snapshot.watermark_ms
            self._seen_stl = snapshot.settlements_ms or snapshot.watermark_ms
            self._totals = snapshot.totals.copy()
            self._states = dict(snapshot.states)
            for state in self._states.values():
                self._schedule(state)

    # --- reading --------------------------------------------------------------------

    @property
    def watermark(self) -> datetime | None:
        return from_ms(self._wm) if self._wm else None

    @property
    def watermark_ms(self) -> int:
        return self._wm

    @property
    def input_times(self) -> tuple[int, int]:
        """Latest event time seen on (authorisations, settlements), in ms."""
        return self._seen_auth, self._seen_stl

    @property
    def totals(self) -> Totals:
        return self._totals.copy()

    def state(self, transaction_id: str) -> TxState | None:
        return self._states.get(transaction_id)

    def states(self) -> dict[str, TxState]:
        return dict(self._states)

    def snapshot(self) -> Snapshot:
        """A deep copy of everything, e.g. to restore a reconciler elsewhere."""
        return snapshot_from_builtins(
            to_builtins(
                Snapshot(
                    watermark_ms=self._wm,
                    totals=self._totals,
                    states=self._states,
                    authorizations_ms=self._seen_auth,
                    settlements_ms=self._seen_stl,
                )
            )
        )

    def take_changes(self) -> Changes:
        changes = Changes(
            upserts={tx: to_builtins(self._states[tx]) for tx in sorted(self._dirty)},
            deletes=sorted(self._deleted),
        )
        self._dirty.clear()
        self._deleted.clear()
        return changes

    # --- events ---------------------------------------------------------------------

    def on_authorization(self, a: Authorization) -> Found:
        at = to_ms(a.event_time)
        self._seen_auth = max(self._seen_auth, at)
        self._move_watermark()
        found: Found = []
        st = self._states.get(a.transaction_id)
        if st is not None and st.auth is not None:
            self._totals.redelivered += 1
            return self._advance(found)
        self._totals.authorizations += 1
        if st is None:
            st = self._create(a.transaction_id, a.card_id)
        st.card_id = a.card_id
        st.auth = auth_view(a)
        st.last_ms = max(st.last_ms, at)
        pending, st.pending = st.pending, []
        for view in sorted(pending, key=lambda v: (v.at_ms, v.settlement_id)):
            found += self._apply(st, view)
        self._resolve(st)
        return self._advance(found)

    def on_settlement(self, s: Settlement) -> Found:
        at = to_ms(s.settled_at)
        self._seen_stl = max(self._seen_stl, at)
        self._move_watermark()
        found: Found = []
        st = self._states.get(s.transaction_id)
        if st is None:
            st = self._create(s.transaction_id, s.card_id)
        elif s.settlement_id in st.seen or any(
            p.settlement_id == s.settlement_id for p in st.pending
        ):
            self._totals.redelivered += 1
            return self._advance(found)
        self._totals.settlements += 1
        self._dirty.add(st.transaction_id)
        st.last_ms = max(st.last_ms, at)
        view = settlement_view(s)
        if st.auth is None:
            st.pending.append(view)
            self._open(st, self._orphan_due(st))
        else:
            found += self._apply(st, view)
            if st.full or st.status == "closed":
                self._close(st)  # (re)schedules its eviction from this event on
        return self._advance(found)

    def advance(self, watermark: datetime) -> Found:
        """Move event time forward on both inputs (never back) and report what its
        deadlines reveal."""
        at = to_ms(watermark)
        self._seen_auth = max(self._seen_auth, at)
        self._seen_stl = max(self._seen_stl, at)
        self._move_watermark()
        return self._advance([])

    def _move_watermark(self) -> None:
        # Deadlines run on the lower of the two inputs' event times: "not settled" needs
        # the settlements read up to the deadline, "no authorisation" the authorisations.
        # With the higher one, a backlog on either topic would raise false exceptions.
        self._wm = max(self._wm, min(self._seen_auth, self._seen_stl))

    # --- matching -------------------------------------------------------------------

    def _apply(self, st: TxState, view: SettlementView) -> Found:
        auth = st.auth
        assert auth is not None
        st.seen.append(view.settlement_id)
        found: Found = []

        def report(kind: ExceptionKind, detail: str) -> None:
            found.append(self._exception(kind, st, view, detail))

        if view.kind == "refund":
            if view.currency != auth.currency:
                report("currency_mismatch", f"refund in {view.currency}, paid in {auth.currency}")
            else:
                # Split shipments may refund an order before its last part is captured.
                partly = st.captures > 0 and not st.full
                limit = max(st.captured, auth.cents) if partly else st.captured
                if st.refunded + view.cents > limit + self._tol:
                    report(
                        "refund_exceeds_capture",
                        f"refunds of {_money(st.refunded + view.cents)} exceed the "
                        f"{_money(limit)} captured",
                    )
                st.refunded += view.cents
        else:
            st.captures += 1
            if not auth.approved:
                report("settled_while_declined", f"{view.kind} of a declined authorisation")
            if view.currency != auth.currency:
                detail = f"{view.kind} in {view.currency}, authorised in {auth.currency}"
                report("currency_mismatch", detail)
                st.full = st.full or view.kind != "partial_capture"
            else:
                self._check_amount(st, view, report)
        if not found:
            self._totals.matched += 1
        return found

    def _check_amount(self, st: TxState, view: SettlementView, report: Report) -> None:
        auth = st.auth
        assert auth is not None
        tol, cents = self._tol, view.cents
        if st.full:
            if abs(cents - auth.cents) <= tol:
                report("duplicate_settlement", "the authorisation was already fully captured")
            else:
                report("amount_mismatch", "captured again after a full capture")
        elif view.kind == "capture":
            if abs(cents - auth.cents) > tol:
                report("amount_mismatch", "capture differs from the authorised amount")
        elif view.kind == "tip_adjusted":
            ceiling = auth.cents * (1 + self._cfg.max_tip_share)
            if not auth.cents - tol <= cents <= ceiling + tol:
                report(
                    "amount_mismatch",
                    f"tip-adjusted amount outside 0–{self._cfg.max_tip_share:.0%} over the "
                    "authorisation",
                )
        elif st.captured + cents > auth.cents + tol:
            report("amount_mismatch", "partial captures exceed the authorised amount")
        st.captured += cents
        if view.kind != "partial_capture" or st.captured >= auth.cents - tol:
            st.full = True

    # --- open / closed and deadlines ------------------------------------------------

    def _resolve(self, st: TxState) -> None:
        """After an authorisation arrives: wait for captures, or not. A deadline already
        behind the watermark (a late authorisation) fires on the next advance."""
        auth = st.auth
        assert auth is not None
        if not auth.approved or st.full:
            self._close(st)
        else:
            self._open(st, auth.event_ms + self._cfg.settle_window_ms)

    def _expire(self, st: TxState) -> Found:
        found: Found = []
        if st.auth is None:
            horizon = self._wm - self._cfg.orphan_grace_ms
            for view in st.pending:
                if not view.reported and view.at_ms <= horizon:
                    view.reported = True
                    found.append(
                        self._exception(
                            "settlement_without_authorization",
                            st,
                            view,
                            "no authorisation within the grace period",
                        )
                    )
            if any(not v.reported for v in st.pending):
                self._open(st, self._orphan_due(st))
            else:
                self._close(st)
        else:
            if st.captures == 0 and st.auth.approved:
                found.append(
                    self._exception(
                        "authorization_not_settled", st, None, "nothing captured in time"
                    )
                )
            self._close(st)
        return found

    def _orphan_due(self, st: TxState) -> int:
        waiting = [v.at_ms for v in st.pending if not v.reported]
        return min(waiting) + self._cfg.orphan_grace_ms

    def _advance(self, found: Found) -> Found:
        timers, retention = self._timers, self._cfg.retention_ms
        while timers and timers[0][0] <= self._wm:
            when, tx = heapq.heappop(timers)
            st = self._states.get(tx)
            if st is None:
                continue
            # Only the entry matching the state's current deadline counts, so the order
            # of what fires does not depend on stale entries (a restored reconciler, whose
            # timers are rebuilt from its states, reports in exactly the same order).
            if st.status == "open":
                if st.due_ms == when:
                    self._dirty.add(tx)
                    found += self._expire(st)
            elif st.last_ms + retention == when:
                del self._states[tx]
                self._dirty.discard(tx)
                self._deleted.add(tx)
                self._totals.evicted += 1
        return found

    def _create(self, tx: str, card_id: str) -> TxState:
        st = TxState(transaction_id=tx, card_id=card_id)
        self._states[tx] = st
        self._deleted.discard(tx)
        self._dirty.add(tx)
        return st

    def _open(self, st: TxState, due_ms: int) -> None:
        if st.status == "closed":
            st.status = "open"
            self._totals.opened += 1
            self._totals.open += 1
        st.due_ms = due_ms
        self._dirty.add(st.transaction_id)
        self._schedule(st)

    def _close(self, st: TxState) -> None:
        if st.status == "open":
            st.status = "closed"
            self._totals.closed += 1
            self._totals.open -= 1
        st.due_ms = None
        self._dirty.add(st.transaction_id)
        self._schedule(st)

    def _schedule(self, st: TxState) -> None:
        if st.status == "open" and st.due_ms is not None:
            when = st.due_ms
        else:
            when = st.last_ms + self._cfg.retention_ms
        heapq.heappush(self._timers, (when, st.transaction_id))

    def _exception(
        self, kind: ExceptionKind, st: TxState, view: SettlementView | None, detail: str
    ) -> ReconciliationException:
        self._totals.exceptions[kind] = self._totals.exceptions.get(kind, 0) + 1
        auth = st.auth
        return ReconciliationException(
            schema_version=SCHEMA_VERSION,
            kind=kind,
            transaction_id=st.transaction_id,
            card_id=st.card_id,
            settlement_id=view.settlement_id if view else None,
            expected_amount=auth.cents / 100 if auth else None,
            expected_currency=auth.currency if auth else None,
            actual_amount=view.cents / 100 if view else None,
            actual_currency=view.currency if view else None,
            detail=detail[:512],
            # the latest event time seen on either input: when, in event time, it was known
            detected_at=from_ms(max(self._wm, self._seen_auth, self._seen_stl)),
        )


def _money(cents: int) -> str:
    return f"{cents / 100:.2f}"
