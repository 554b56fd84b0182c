"""Random programs of ledger operations, checked against a plain model after every step, on every store.

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
from tests.ledger.conftest import make_store

# Programs per store: 1,000 in CI (.ci/run sets it), fewer by default so the suite stays quick to run by hand.
PROGRAMS = int(os.environ.get("APIKEY_TEST_LEDGER_PROGRAMS", "150"))


class LedgerMachine(RuleBasedStateMachine):
    runner: asyncio.Runner
    store: object

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:8]
        self.names = [f"a-{tag}", f"b-{tag}"]
        self.model = {name: [0, 0, 0] for name in self.names}  # budget, spent, reserved
        self.open: dict[str, tuple[str, int]] = {}  # reservation id -> (principal, credits)
        self.made: list[str] = []  # every reservation id, in the order made (ids are random: never sort them)
        for name, budget in zip(self.names, (100, 37), strict=True):
            self.call("ensure_principal", name, budget)
            self.model[name][0] = budget

    def call(self, method: str, *args, **kwargs):
        return self.runner.run(getattr(self.store, method)(*args, **kwargs))

    @rule(who=st.integers(0, 1), credits=st.integers(0, 60))
    def reserve(self, who: int, credits: int) -> None:
        name = self.names[who]
        budget, spent, reserved = self.model[name]
        try:
            reservation = self.call("reserve", name, credits, "p")
        except BudgetExceededError:
            assert spent + reserved + credits > budget
        else:
            assert spent + reserved + credits <= budget
            self.model[name][2] += credits
            self.open[reservation.id] = (name, credits)
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

    def check(self, name: str) -> None:
        """The store's running totals equal the model's after every change (the only principal it touched)."""
        assert self.call("totals", name) == Totals(*self.model[name])

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
            machine.settings = settings(max_examples=PROGRAMS, stateful_step_count=10, deadline=None,
                                        suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
            machine().runTest()
        finally:
            runner.run(cm.__aexit__(None, None, None))
