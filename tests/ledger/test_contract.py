"""The ledger contract, the same for every store: atomic reservations, exactly-once closing, running totals,
the operator's budget, paged listings and the audit trail."""

from __future__ import annotations

import anyio
import pytest

from apikey_mcp.budget import (
    OPERATOR,
    BudgetExceededError,
    Hold,
    LedgerStore,
    ReservationState,
    Totals,
    UnknownPrincipalError,
)


async def test_a_reservation_that_does_not_fit_is_refused_whole(store: LedgerStore) -> None:
    assert await store.ensure_principal("alice", 100) == (Totals(100, 0, 0), True)
    assert await store.ensure_principal("alice", 5000) == (Totals(100, 0, 0), False)  # the default is for new ones
    first = await store.reserve("alice", 60, "video")
    with pytest.raises(BudgetExceededError) as refused:
        await store.reserve("alice", 41, "another")
    assert (refused.value.needed, refused.value.remaining, refused.value.budget) == (41, 40, 100)
    assert await store.totals("alice") == Totals(100, 0, 60)
    assert (await store.reservation(first.id)).state == ReservationState.RESERVED


async def test_settle_and_release_happen_exactly_once(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    first = await store.reserve("alice", 60, "video")
    assert await store.settle(first.id, 55)
    assert not await store.settle(first.id, 55) and not await store.release(first.id)
    assert await store.totals("alice") == Totals(100, 55, 0)
    second = await store.reserve("alice", 45, "all that is left")
    assert await store.release(second.id) and not await store.settle(second.id, 45)
    assert (await store.totals("alice")).remaining == 45
    assert not await store.settle("no-such-reservation", 1) and not await store.release("no-such-reservation")
    closed = await store.reservation(first.id)
    assert (closed.state, closed.charged) == (ReservationState.SETTLED, 55)


async def test_a_charge_over_the_hold_is_counted_in_full(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    held = await store.reserve("alice", 40, "chat")
    assert await store.settle(held.id, 70)  # the gateway may charge more than reserved: never capped
    assert await store.totals("alice") == Totals(100, 70, 0)


async def test_a_charge_over_the_hold_adds_an_overcharge_event_after_its_settle(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    exact, over = await store.reserve("alice", 10, "chat"), await store.reserve("alice", 40, "chat")
    assert await store.settle(exact.id, 10)
    assert await store.settle(over.id, 70, actor=OPERATOR, detail="the invoice says 70")
    tail = [(e.kind, e.actor, e.reservation_id, e.credits, e.detail) for e in (await store.history("alice"))[-3:]]
    assert tail == [
        ("settle", "principal:alice", exact.id, 10, None),  # at the hold: no overcharge
        ("settle", OPERATOR, over.id, 70, "the invoice says 70"),
        ("overcharge", OPERATOR, over.id, 30, "charged 70 credits on a hold of 40: the invoice says 70"),
    ]
    assert (await store.history("alice"))[-1].totals == Totals(100, 80, 0)


@pytest.mark.parametrize("charge", [-1, 2**63, 1.5, 9.223372036854776e18, True])
async def test_a_charge_no_store_can_keep_is_refused_and_changes_nothing(store: LedgerStore, charge: object) -> None:
    await store.ensure_principal("alice", 100)
    held = await store.reserve("alice", 40, "chat")
    with pytest.raises(ValueError, match="whole number from 0 to 9223372036854775807"):
        await store.settle(held.id, charge)  # type: ignore[arg-type]
    assert await store.totals("alice") == Totals(100, 0, 40)


async def test_attach_ties_only_an_open_reservation(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    held = await store.reserve("alice", 10, "image", own_key=True)
    assert await store.attach(held.id, "task_1", "image")
    found = await store.reservation(held.id)
    assert (found.task_id, found.modality, found.own_key) == ("task_1", "image", True)
    assert (await store.task_reservation("alice", "task_1")).id == held.id
    assert await store.task_reservation("bob", "task_1") is None  # whose task it is, as the ledger knows it
    await store.release(held.id)
    assert not await store.attach(held.id, "task_2") and not await store.attach("nope", "task_3")
    assert (await store.task_reservation("alice", "task_1")).state == ReservationState.RELEASED


async def test_the_operator_sets_a_budget_and_a_lower_one_only_refuses_new_holds(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    held = await store.reserve("alice", 80, "video")
    assert await store.set_budget("alice", 50, OPERATOR) == Totals(50, 0, 80)
    with pytest.raises(BudgetExceededError) as refused:
        await store.reserve("alice", 1, "more")
    assert refused.value.remaining == 0
    assert await store.settle(held.id, 80)
    assert await store.set_budget("bob", 7, OPERATOR) == Totals(7, 0, 0)  # the operator may provision ahead
    assert [name for name, _ in await store.principals()] == ["alice", "bob"]
    with pytest.raises(UnknownPrincipalError):
        await store.totals("carol")
    with pytest.raises(UnknownPrincipalError):
        await store.reserve("carol", 1, "x")


async def test_reservations_are_listed_newest_first_and_paged(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 1000)
    await store.ensure_principal("bob", 1000)
    made = [await store.reserve("alice" if i % 2 else "bob", i, f"r{i}") for i in range(1, 8)]
    await store.release(made[0].id)
    await store.settle(made[1].id, 2)
    everyone = await store.reservations()
    assert [r.id for r in everyone] == [r.id for r in reversed(made)]
    assert [r.id for r in await store.reservations(limit=3, offset=2)] == [r.id for r in reversed(made)][2:5]
    open_alice = await store.reservations("alice", open_only=True)
    assert [r.credits for r in open_alice] == [7, 5, 3]
    assert all(r.state == ReservationState.RESERVED for r in open_alice)


async def test_every_change_is_in_the_audit_trail_with_who_made_it(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    held = await store.reserve("alice", 30, "video")
    await store.attach(held.id, "task_9", "video")
    await store.settle(held.id, 25)
    other = await store.reserve("alice", 10, "image")
    await store.release(other.id, actor=OPERATOR)
    await store.set_budget("alice", 200, OPERATOR)
    events = await store.history("alice")
    assert [(e.kind, e.actor, e.credits) for e in events] == [
        ("budget", "configuration", 100),
        ("reserve", "principal:alice", 30),
        ("attach", "principal:alice", None),
        ("settle", "principal:alice", 25),
        ("reserve", "principal:alice", 10),
        ("release", "operator", 0),
        ("budget", "operator", 200),
    ]
    assert events[3].totals == Totals(100, 25, 0) and events[-1].totals == Totals(200, 25, 0)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert [e.kind for e in await store.history(limit=2, offset=1)] == ["reserve", "attach"]


async def test_a_callback_signature_is_first_seen_once(store: LedgerStore) -> None:
    assert await store.first_sighting("sig-a", keep_seconds=600)
    assert not await store.first_sighting("sig-a", keep_seconds=600)
    assert await store.first_sighting("sig-b", keep_seconds=600)


async def test_concurrent_reservations_never_overspend(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 1000)
    granted: list[str] = []
    refused: list[int] = []

    async def one() -> None:
        try:
            granted.append((await store.reserve("alice", 30, "video")).id)
        except BudgetExceededError:
            refused.append(1)

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(one)
    assert (len(granted), len(refused)) == (33, 17)
    assert await store.totals("alice") == Totals(1000, 0, 990)

    settled: list[bool] = []

    async def close(reservation_id: str) -> None:
        settled.append(await store.settle(reservation_id, 30))

    async with anyio.create_task_group() as group:
        for reservation_id in granted * 2:  # every one settled twice at once
            group.start_soon(close, reservation_id)
    assert settled.count(True) == 33
    assert await store.totals("alice") == Totals(1000, 990, 0)


async def test_a_lost_task_keeps_its_hold_and_is_listed_until_closed(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    lost, other = await store.reserve("alice", 10, "image"), await store.reserve("alice", 5, "image")
    await store.attach(lost.id, "task_lost")
    assert await store.mark_lost(lost.id) and not await store.mark_lost(lost.id)  # once
    assert (await store.totals("alice")).reserved == 15  # fail closed: it may have been charged
    listed = await store.reservations("alice", lost_only=True)
    assert [r.id for r in listed] == [lost.id] and listed[0].lost_at is not None
    assert (await store.reservation(other.id)).lost_at is None
    assert await store.release(lost.id, actor=OPERATOR)
    assert await store.reservations(lost_only=True) == [] and not await store.mark_lost(lost.id)
    assert "lost" in [e.kind for e in await store.history("alice")]


async def test_a_lost_line_carries_the_model_and_every_hold_of_the_task_is_lost(store: LedgerStore) -> None:
    """Regression (bbf5674): the memory and SQLite stores wrote their `lost` line without the model (so
    `admin history --json` could not say what the lost credits were for); PostgreSQL always carried it. Two holds
    tied to one task (a create the gateway answered with that task again) are each marked lost, once."""
    await store.ensure_principal("alice", 100)
    hold = Hold("image with flux-schnell", "flux-schnell", "image")
    first, again = (
        await store.reserve("alice", 10, "image", hold=hold),
        await store.reserve("alice", 7, "image", hold=hold),
    )
    for reservation in (first, again):
        await store.attach(reservation.id, "task_twice", "image")
    assert await store.mark_lost(first.id) and await store.mark_lost(again.id) and not await store.mark_lost(again.id)
    lost_lines = [e for e in await store.history("alice") if e.kind == "lost"]
    assert [(e.reservation_id, e.model) for e in lost_lines] == [(first.id, "flux-schnell"), (again.id, "flux-schnell")]
    assert (await store.totals("alice")).reserved == 17  # both stay counted
    assert sorted(r.id for r in await store.reservations("alice", lost_only=True)) == sorted([first.id, again.id])
