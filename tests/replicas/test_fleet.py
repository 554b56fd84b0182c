"""The fleet's shared tables on a real PostgreSQL: leases, task states, callbacks in one transaction, wake-ups."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from apikey_mcp.gateway.models import Task, TaskCredits
from apikey_mcp.replicas.fleet import Fleet
from apikey_mcp.stores import open_store
from tests.conftest import wait_until
from tests.ledger.conftest import postgres_schema

pytestmark = pytest.mark.slow  # replicas behind nginx on PostgreSQL


@pytest.fixture
async def fleets() -> AsyncIterator[tuple[Fleet, Fleet]]:
    """Two replicas' views of one fresh database schema, each with its own pool."""
    with postgres_schema() as url:
        async with open_store(database_url=url) as a_store, open_store(database_url=url) as b_store:
            a, b = Fleet(a_store, url, "A", lease_seconds=60), Fleet(b_store, url, "B", lease_seconds=60)  # type: ignore[arg-type]
            await a.open()
            await b.open()
            yield a, b


async def _open_task(fleet: Fleet, principal: str = "alice", credits: int = 10) -> tuple[str, str]:
    store = fleet.store
    await store.ensure_principal(principal, 100)
    reservation = await store.reserve(principal, credits, "image")
    task_id = f"task_{reservation.id[:8]}"
    assert await store.attach(reservation.id, task_id, "image")
    return reservation.id, task_id


async def test_one_lease_per_task_and_an_expired_one_is_taken_over(fleets: tuple[Fleet, Fleet]) -> None:
    a, b = fleets
    _, task_id = await _open_task(a)
    assert await a.claim(task_id) == "new"
    assert await b.claim(task_id) is None
    assert await a.claim(task_id) == "ours"
    assert await a.renew() == 1
    assert [r.task_id for r in await b.orphans()] == []
    await a.store.transaction(
        lambda c: c.execute("UPDATE apikey_task_leases SET lease_until = clock_timestamp() - interval '1 second'")
    )  # A died: it stopped renewing
    assert [r.task_id for r in await b.orphans()] == [task_id]
    assert await b.claim(task_id) == "taken"
    assert await a.claim(task_id) is None
    assert await a.renew() == 0
    await b.release(task_id)
    assert await a.claim(task_id) == "new"


async def test_concurrent_claims_grant_one(fleets: tuple[Fleet, Fleet]) -> None:
    a, b = fleets
    _, task_id = await _open_task(a)
    results: list[object] = []

    async def claim(fleet: Fleet) -> None:
        results.append(await fleet.claim(task_id))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(claim, a)
            group.start_soon(claim, b)
    granted = [r for r in results if r is not None]
    assert len(results) == 20 and len(granted) == 10  # all of one replica's, none of the other's
    assert await a.lease_owner(task_id) in ("A", "B")


async def test_a_callback_settles_records_and_announces_once(fleets: tuple[Fleet, Fleet]) -> None:
    a, b = fleets
    reservation_id, task_id = await _open_task(a, credits=10)
    heard: list[str] = []
    connected = anyio.Event()

    async def on_task(announced: str) -> None:
        heard.append(announced)

    async def on_connect() -> None:
        connected.set()

    done = Task(task_id=task_id, status="succeeded", credits=TaskCredits(reserved=0, charged=7))
    async with anyio.create_task_group() as group:
        group.start_soon(b.listen, on_task, on_connect)
        with anyio.fail_after(10):
            await connected.wait()
        outcomes = []
        for fleet in (a, b, a):  # the same signed delivery three times, to either replica
            outcomes.append(await fleet.settle_callback("sig-1", 600, done, reservation_id))
        await wait_until(lambda: bool(heard))
        group.cancel_scope.cancel()
    assert outcomes == ["recorded", "replay", "replay"]
    assert heard == [task_id]
    totals = await a.store.totals("alice")
    assert (totals.spent, totals.reserved) == (7, 0)
    shared = await b.find(task_id, "alice")
    assert shared is not None and shared.task.status == "succeeded" and shared.reservation is not None
    assert shared.reservation.state == "settled" and shared.reservation.charged == 7
    assert await b.find(task_id, "mallory") is None


async def test_a_callback_for_an_unknown_task_changes_nothing(fleets: tuple[Fleet, Fleet]) -> None:
    a, _ = fleets
    stray = Task(task_id="task_nobody", status="succeeded")
    assert await a.settle_callback("sig-2", 600, stray, None) == "unknown"
    rows = await a.store.rows("SELECT count(*) FROM apikey_callbacks")
    assert rows == [(0,)]  # rolled back: a later delivery to the right place still counts


async def test_a_callback_recovers_a_create_whose_answer_was_lost(fleets: tuple[Fleet, Fleet]) -> None:
    a, _ = fleets
    await a.store.ensure_principal("bob", 100)
    reservation = await a.store.reserve("bob", 12, "video")  # created, but its task id never came back
    failed = Task(task_id="task_lost", status="failed")
    assert await a.settle_callback("sig-3", 600, failed, reservation.id) == "recorded"
    after = await a.store.reservation(reservation.id)
    assert after is not None and after.task_id == "task_lost" and after.state == "released"
    assert (await a.store.totals("bob")).reserved == 0


async def test_a_terminal_state_is_never_overwritten(fleets: tuple[Fleet, Fleet]) -> None:
    a, b = fleets
    _, task_id = await _open_task(a)
    await a.publish("alice", Task(task_id=task_id, status="succeeded"))
    await b.publish("alice", Task(task_id=task_id, status="running", progress=0.5))
    shared = await a.find(task_id)
    assert shared is not None and shared.task.status == "succeeded"


async def test_a_callback_charge_above_the_hold_is_recorded_with_an_overcharge_and_an_error(
    fleets: tuple[Fleet, Fleet], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = fleets
    rid, task_id = await _open_task(a, credits=10)
    done = Task(task_id=task_id, status="succeeded", credits=TaskCredits(reserved=0, charged=50))
    assert await a.settle_callback("sig-over", 600, done, None) == "recorded"
    events = [(e.kind, e.reservation_id, e.credits, e.detail) for e in (await a.store.history("alice"))[-2:]]
    assert events == [("settle", rid, 50, None), ("overcharge", rid, 40, "charged 50 credits on a hold of 10")]
    assert (await a.store.totals("alice")).spent == 50
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"overcharge: the gateway charged 50 credits for task {task_id}, over its hold of 10 (reservation {rid})"
    ]


async def test_lost_tasks_never_fill_the_orphan_scan(fleets: tuple[Fleet, Fleet]) -> None:
    """Regression: 101 tasks the gateway answers 404 for filled the scan's oldest-100 window for ever, so a dead
    replica's task was never taken over. Lost tasks are not orphans: the operator closes them."""
    a, b = fleets
    await a.store.ensure_principal("alice", 10_000)
    for _ in range(101):
        reservation_id, _ = await _open_task(a, credits=1)
        assert await a.store.mark_lost(reservation_id)
    _, live = await _open_task(a, credits=1)
    assert [r.task_id for r in await b.orphans()] == [live]


async def test_the_orphan_scan_pages_through_every_orphan(fleets: tuple[Fleet, Fleet]) -> None:
    a, b = fleets
    await a.store.ensure_principal("alice", 10_000)
    made = {(await _open_task(a, credits=1))[1] for _ in range(45)}
    seen: list[str] = []
    after = (float("-inf"), "")
    while page := await b.orphans(limit=10, after=after):
        seen += [r.task_id for r in page if r.task_id]
        after = (page[-1].created_at, page[-1].id)
    assert len(seen) == len(set(seen)) == 45 and set(seen) == made
