"""The reconciler as a state machine over random event sequences (Hypothesis).

Checked after every step: the continuity identity open(now) = open(before) + opened −
closed over every window, ``open`` equal to the open states, no deadline left unfired
behind the watermark, nothing kept past its retention, and a twin restored from a JSON
snapshot at random points behaving exactly like the original.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fraudstream.reconcile import ReconcileConfig, Reconciler, Totals
from fraudstream.reconcile.state import from_ms, snapshot_from_builtins, to_builtins, to_ms
from fraudstream.wire import Authorization, ReconciliationException, Settlement

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CONFIG = ReconcileConfig(settle_window_hours=48, orphan_grace_hours=6, retention_days=10)
TXS = st.sampled_from([f"tx-{i}" for i in range(6)])
AMOUNTS = st.sampled_from([10.0, 12.5, 20.0, 25.0])
CURRENCIES = st.sampled_from(["EUR", "EUR", "EUR", "USD"])
KINDS = st.sampled_from(["capture", "partial_capture", "refund", "tip_adjusted"])
HOURS = st.integers(min_value=-48, max_value=24 * 12)


def restored(r: Reconciler) -> Reconciler:
    blob = msgspec.json.encode(to_builtins(r.snapshot()))
    return Reconciler(CONFIG, snapshot_from_builtins(msgspec.json.decode(blob)))


class ReconcilerMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.clock = T0
        self.main = Reconciler(CONFIG)
        self.twin = Reconciler(CONFIG)  # replaced by a restored copy of itself now and then
        self.history: list[Totals] = [self.main.totals]
        self.sent: list[Settlement] = []
        self.found: list[ReconciliationException] = []

    def _at(self, hours: int) -> datetime:
        self.clock = max(T0, self.clock + timedelta(hours=hours))
        return self.clock

    def _both(self, call: str, event: object) -> None:
        a = getattr(self.main, call)(event)
        b = getattr(self.twin, call)(event)
        assert a == b
        # Detected at the latest event time seen on either input (deadlines themselves
        # run on the lower of the two, which the watermark is).
        latest = from_ms(max(self.main.input_times))
        assert all(e.detected_at == latest for e in a)
        assert self.main.watermark_ms <= min(self.main.input_times)
        self.found += a
        self.history.append(self.main.totals)

    @rule(tx=TXS, approved=st.booleans(), amount=AMOUNTS, currency=CURRENCIES, hours=HOURS)
    def authorize(self, tx: str, approved: bool, amount: float, currency: str, hours: int) -> None:
        at = self._at(hours)
        event = Authorization(
            schema_version=1,
            transaction_id=tx,
            card_id="card-1",
            approved=approved,
            response_code="00" if approved else "59",
            review=False,
            timeout_default=False,
            amount=amount,
            currency=currency,
            decision="approve" if approved else "decline",
            score=0.5,
            model_version="m",
            event_time=at,
            authorized_at=at,
        )
        self._both("on_authorization", event)

    @rule(tx=TXS, kind=KINDS, amount=AMOUNTS, currency=CURRENCIES, hours=HOURS)
    def settle(self, tx: str, kind: str, amount: float, currency: str, hours: int) -> None:
        event = Settlement(
            schema_version=1,
            settlement_id=f"s-{len(self.sent)}",
            transaction_id=tx,
            card_id="card-1",
            amount=amount,
            currency=currency,
            settled_at=self._at(hours),
            kind=kind,  # type: ignore[arg-type]
        )
        self.sent.append(event)
        self._both("on_settlement", event)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self.sent))
        state = self.main.state(event.transaction_id)
        remembered = state is not None and (
            event.settlement_id in state.seen
            or any(p.settlement_id == event.settlement_id for p in state.pending)
        )
        before = self.main.totals
        self._both("on_settlement", event)
        after = self.main.totals
        if remembered:  # a true redelivery: counted, and nothing else changes
            assert after.redelivered == before.redelivered + 1
            assert after.settlements == before.settlements
            assert after.matched == before.matched
        else:  # forgotten after its retention: a new, unknown settlement
            assert after.settlements == before.settlements + 1

    @rule(hours=st.integers(min_value=0, max_value=24 * 20))
    def advance(self, hours: int) -> None:
        self._both("advance", self._at(hours))

    @rule()
    def restart(self) -> None:
        self.twin = restored(self.twin)

    @invariant()
    def continuity_over_every_window(self) -> None:
        now = self.main.totals
        for before in self.history:
            opened, closed = now.opened - before.opened, now.closed - before.closed
            assert now.open == before.open + opened - closed
        assert now.open == sum(s.status == "open" for s in self.main.states().values())
        assert now.open >= 0
        assert sum(now.exceptions.values()) == len(self.found)

    @invariant()
    def deadlines_fired_and_memory_bounded(self) -> None:
        watermark = self.main.watermark
        if watermark is None:
            return
        wm = to_ms(watermark)
        for state in self.main.states().values():
            if state.status == "open":
                assert state.due_ms is not None and state.due_ms > wm
            else:
                assert state.last_ms + CONFIG.retention_ms > wm

    @invariant()
    def twin_agrees(self) -> None:
        assert self.twin.totals == self.main.totals
        assert self.twin.states() == self.main.states()

    def teardown(self) -> None:
        if not hasattr(self, "main"):
            return
        self.main.advance(self.clock + timedelta(days=CONFIG.retention_days * 3))
        totals = self.main.totals
        assert self.main.states() == {}
        assert totals.open == 0 and totals.opened == totals.closed


ReconcilerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestReconcilerMachine = ReconcilerMachine.TestCase
