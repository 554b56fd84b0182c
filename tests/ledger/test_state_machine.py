"""Random programs of ledger operations, checked against a plain model after every step, on every store.

The programs include the spending policy's budget periods: the clock (the time the server passes into each
statement) moves on or back, periods change kind, a reservation's charge counts in the period it was made in,
and an alert is claimed once per threshold per period.

Each program uses fresh principals in one store per test, so a program costs only its own operations.
The store runs on an asyncio event loop kept by the test; hypothesis drives it synchronously.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from apikey_mcp.budget import OPERATOR, BudgetExceededError, Totals
from apikey_mcp.periods import PERIODS, period_start, rolled
from apikey_mcp.policy import Policy
from tests.ledger.conftest import make_store

# Programs per store: 1,000 in CI (.ci/run sets it), fewer by default so the suite stays quick to run by hand.
PROGRAMS = int(os.environ.get("APIKEY_TEST_LEDGER_PROGRAMS", "150"))
START = 1_796_580_000.0  # 2026-12-06T18:00:00Z, a Sunday: a day, a week and a month all end within reach
STEPS = [-7200, 0, 600, 3 * 3600, 86_400, 7 * 86_400, 31 * 86_400]  # a clock may also be behind (another replica)


class LedgerMachine(RuleBasedStateMachine):
    runner: asyncio.Runner
    store: object

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:8]
        self.names = [f"a-{tag}", f"b-{tag}"]
        self.model = {name: [0, 0, 0] for name in self.names}  # budget, spent in the stored period, reserved
        self.open: dict[str, tuple[str, int]] = {}  # reservation id -> (principal, credits)
        self.made: list[str] = []  # every reservation id, in the order made (ids are random: never sort them)
        self.now = START
        self.period = dict.fromkeys(self.names, "none")
        self.start = dict.fromkeys(self.names, 0.0)  # the stored current period's start
        self.made_in: dict[str, float] = {}  # open reservation id -> the period it counts in
        self.alerts: set[tuple[str, float, int]] = set()
        for name, budget in zip(self.names, (100, 37), strict=True):
            self.call("ensure_principal", name, budget, now=self.now)
            self.model[name][0] = budget

    def roll(self, name: str) -> None:
        """What a write does first: begin the period the clock is in, if it is past the stored one."""
        if (start := rolled(self.period[name], self.start[name], self.now)) is not None:
            self.start[name], self.model[name][1] = start, 0

    def call(self, method: str, *args, **kwargs):
        return self.runner.run(getattr(self.store, method)(*args, **kwargs))

    @rule(who=st.integers(0, 1), credits=st.integers(0, 60))
    def reserve(self, who: int, credits: int) -> None:
        name = self.names[who]
        self.roll(name)
        budget, spent, reserved = self.model[name]
        try:
            reservation = self.call("reserve", name, credits, "p", now=self.now)
        except BudgetExceededError:
            assert spent + reserved + credits > budget
        else:
            assert spent + reserved + credits <= budget
            self.model[name][2] += credits
            self.open[reservation.id] = (name, credits)
            self.made_in[reservation.id] = self.start[name]
            self.made.append(reservation.id)
        self.check(name)

    @precondition(lambda self: self.made)
    @rule(data=st.data(), charged=st.integers(0, 80), settle=st.booleans())
    def close(self, data: st.DataObject, charged: int, settle: bool) -> None:
        rid = self.made[data.draw(st.integers(0, len(self.made) - 1))]
        done = self.call("settle", rid, charged) if settle else self.call("release", rid)
        assert done == (rid in self.open)
        if done:
            name, credits = self.open.pop(rid)
            self.model[name][2] -= credits
            if self.made_in.pop(rid) == self.start[name]:  # else it counts in the older period it was made in
                self.model[name][1] += charged if settle else 0
            self.check(name)

    @precondition(lambda self: self.made)
    @rule(data=st.data())
    def attach(self, data: st.DataObject) -> None:
        rid = self.made[data.draw(st.integers(0, len(self.made) - 1))]
        assert self.call("attach", rid, f"task-{rid[:6]}") == (rid in self.open)

    @rule(who=st.integers(0, 1), budget=st.integers(0, 200))
    def set_budget(self, who: int, budget: int) -> None:
        self.call("set_budget", self.names[who], budget, OPERATOR)
        self.model[self.names[who]][0] = budget
        self.check(self.names[who])

    @rule(step=st.sampled_from(STEPS))
    def clock(self, step: int) -> None:
        self.now += step
        for name in self.names:
            self.check(name)

    @rule(who=st.integers(0, 1), period=st.sampled_from(PERIODS), cap=st.none() | st.integers(0, 50))
    def set_policy(self, who: int, period: str, cap: int | None) -> None:
        name = self.names[who]
        self.call("set_policy", name, Policy(max_per_call=cap, period=period), OPERATOR, now=self.now)
        self.roll(name)
        if period != self.period[name]:  # a new kind starts now, keeping what was spent and held in the current one
            start = period_start(period, self.now)
            for rid, made_in in self.made_in.items():
                if self.open[rid][0] == name and made_in == self.start[name]:
                    self.made_in[rid] = start
            self.start[name], self.period[name] = start, period
        assert self.call("policy", name) == Policy(max_per_call=cap, period=period)
        self.check(name)

    @rule(who=st.integers(0, 1), threshold=st.sampled_from([50, 100]))
    def claim_alert(self, who: int, threshold: int) -> None:
        name = self.names[who]
        key = (name, period_start(self.period[name], self.now), threshold)
        assert self.call("claim_alert", *key) == (key not in self.alerts)
        self.alerts.add(key)

    def check(self, name: str) -> None:
        """The store's running totals equal the model's after every change (the only principal it touched): spent
        is the current period's, none yet in a period that began since the last write."""
        budget, spent, reserved = self.model[name]
        renewed = rolled(self.period[name], self.start[name], self.now) is not None
        assert self.call("totals", name, now=self.now) == Totals(budget, 0 if renewed else spent, reserved)

    def teardown(self) -> None:
        open_ids = {r.id for name in self.names for r in self.call("reservations", name, open_only=True, limit=1000)}
        assert open_ids == set(self.open)


@pytest.mark.slow  # hundreds of random programs per store
@pytest.mark.timeout(900)  # 1,000 programs of ~25 store operations each: about a minute on a busy machine
@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_random_programs_keep_the_ledger_equal_to_its_model(kind: str, tmp_path: Path) -> None:
    if kind == "postgres":
        from tests.ledger.conftest import database_url

        database_url()
    with asyncio.Runner() as runner:
        cm = make_store(kind, tmp_path)
        store = runner.run(cm.__aenter__())
        try:
            LedgerMachine.runner, LedgerMachine.store = runner, store
            machine = LedgerMachine.TestCase
            machine.settings = settings(
                max_examples=PROGRAMS,
                stateful_step_count=10,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            machine().runTest()
        finally:
            runner.run(cm.__aexit__(None, None, None))
