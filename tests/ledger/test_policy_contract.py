"""The spending policy's part of the ledger contract, the same for every store: policies kept and changed, the
default for new principals, periods renewed by the first write after the boundary, charges counted in the
period their reservation was made in, the audit trail, and alerts claimed once."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

from apikey_mcp.budget import OPERATOR, LedgerStore, Totals, UnknownPrincipalError
from apikey_mcp.periods import label, period_end, period_start
from apikey_mcp.policy import Policy

SUNDAY = datetime(2026, 12, 6, 23, 0, tzinfo=UTC).timestamp()
MONDAY = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-12-06T23:59:59", "2026-12-06T00:00:00", "2026-12-07T00:00:00"),
        ("week", "2026-12-06T23:59:59", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),  # weeks start on Monday
        ("week", "2026-12-07T00:00:00", "2026-12-07T00:00:00", "2026-12-14T00:00:00"),
        ("month", "2026-12-31T12:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2027-02-28T12:00:00", "2027-02-01T00:00:00", "2027-03-01T00:00:00"),
    ],
)
def test_calendar_periods_are_utc_and_weeks_start_on_monday(period: str, now: str, start: str, end: str) -> None:
    begun = period_start(period, at(now))
    assert (begun, period_end(period, begun)) == (at(start), at(end))


def test_the_none_period_never_ends() -> None:
    assert period_start("none", SUNDAY) == 0 and period_end("none", 0) is None and label("none", 0) == "none"


async def test_a_new_principal_gets_the_default_policy_and_the_operator_changes_it(store: LedgerStore) -> None:
    default = Policy(max_per_call=50, allow=("image", "gpt-4o-mini"), period="week", alert_at=80)
    await store.ensure_principal("alice", 100, policy=default, now=SUNDAY)
    await store.ensure_principal("alice", 100, policy=Policy(), now=SUNDAY)  # known: its policy stays
    assert await store.policy("alice") == default
    changed = Policy(max_per_call=None, allow=(), period="month", alert_at=None)
    assert await store.set_policy("alice", changed, OPERATOR, now=SUNDAY) == changed
    assert await store.policies() == {"alice": changed}
    with pytest.raises(UnknownPrincipalError):
        await store.set_policy("nobody", changed, OPERATOR)
    kinds = [(e.kind, e.actor) for e in await store.history("alice")]
    assert kinds == [("budget", "configuration"), ("policy", "configuration"), ("policy", OPERATOR)]


async def test_a_period_renews_at_its_boundary_and_an_older_hold_counts_in_its_own(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100, policy=Policy(period="day"), now=SUNDAY)
    spent = await store.reserve("alice", 30, "sunday's", now=SUNDAY)
    await store.settle(spent.id, 30)
    older = await store.reserve("alice", 50, "still running at midnight", now=SUNDAY)
    assert await store.totals("alice", now=MONDAY) == Totals(100, 0, 50)  # a read renews nothing, shows Monday
    newer = await store.reserve("alice", 40, "monday's", now=MONDAY)
    assert await store.settle(older.id, 45) and await store.totals("alice", now=MONDAY) == Totals(100, 0, 40)
    assert await store.settle(newer.id, 40) and await store.totals("alice", now=MONDAY) == Totals(100, 40, 0)
    assert (older.period_start, newer.period_start) == (period_start("day", SUNDAY), period_start("day", MONDAY))
    events = await store.history("alice")
    assert [(e.kind, e.credits, e.detail) for e in events if e.kind == "period"] == [
        ("period", 30, "day 2026-12-06 ended with 30 spent")
    ]
    assert [e.detail for e in events if e.kind == "settle"] == [None, "period 2026-12-06T00:00:00Z", None]


async def test_a_clock_behind_the_store_never_moves_a_period_back(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100, policy=Policy(period="day"), now=MONDAY)
    late = await store.reserve("alice", 10, "from a replica whose clock is behind", now=SUNDAY)
    assert late.period_start == period_start("day", MONDAY)
    assert await store.settle(late.id, 10) and await store.totals("alice", now=MONDAY) == Totals(100, 10, 0)


async def test_an_alert_is_claimed_once_per_threshold_and_period_however_many_ask(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    won: list[bool] = []

    async def claim() -> None:
        won.append(await store.claim_alert("alice", 80, 0.0))

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(claim)
    assert sorted(won) == [False] * 7 + [True]
    assert await store.claim_alert("alice", 100, 0.0) and await store.claim_alert("alice", 80, MONDAY)
    assert [e.detail for e in await store.history("alice") if e.kind == "alert"] == ["80%", "100%", "80%"]
