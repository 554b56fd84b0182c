"""The session budget holds under concurrency, failures and cancellation."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio
import pytest

from apikey_mcp.budget import Totals
from apikey_mcp.gateway import InsufficientCreditsError
from apikey_mcp.gateway.models import VideoRequest
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.stores import MemoryLedgerStore
from tests.conftest import KEY, advance, gate, wait_until
from tests.server.conftest import call, connect, running_service, settings_for, text_of, totals

VIDEO = {"prompt": "a drone shot over hills", "model": "seedance-2-fast", "duration": 5, "resolution": "720p"}
VIDEO_COST = 40


async def invariant_violations(store: MemoryLedgerStore) -> list:
    """Every change the store made, checked: spent + reserved <= budget after each (the audit trail has them)."""
    events = await store.history("local")
    assert events, "the ledger recorded its changes"
    return [e for e in events if e.totals.spent + e.totals.reserved > e.totals.budget]


@pytest.mark.parametrize("k", [0, 1, 7])
async def test_twenty_concurrent_videos_with_budget_for_k_create_exactly_k(
    sandbox_server: SandboxServer, sandbox: Sandbox, k: int
) -> None:
    budget = k * VIDEO_COST + VIDEO_COST - 1
    store = MemoryLedgerStore()
    outcomes: list = []
    async with connect("memory", settings_for(sandbox_server, session_budget=budget), store=store) as client:

        async def one() -> None:
            outcomes.append(await client.call_tool("generate_video", VIDEO))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
        created = [r.structured_content["task_id"] for r in outcomes if not r.is_error]
        refused = [text_of(r) for r in outcomes if r.is_error]
        for task_id in created:
            await call(client, "poll_task", task_id=task_id, wait_seconds=30)
        final = await call(client, "budget_status")

    assert len(created) == len(sandbox.tasks) == k
    assert len(refused) == 20 - k and all("Over budget" in text for text in refused)
    assert await invariant_violations(store) == []
    assert len(await store.history("local")) >= 1 + 3 * k  # budget, then reserve, attach, settle per video
    assert final == {
        "budget": budget,
        "spent": k * VIDEO_COST,
        "reserved": 0,
        "remaining": VIDEO_COST - 1,
        "open_reservations": [],
        "open_count": 0,
        "schema_version": 1,
        "policy": {"allow": []},
        "period": "none",
    }


@pytest.mark.slow
async def test_concurrent_videos_over_stdio_create_exactly_k(sandbox_server: SandboxServer, sandbox: Sandbox) -> None:
    budget = 3 * VIDEO_COST + 10
    async with connect("stdio", settings_for(sandbox_server, session_budget=budget)) as client:
        results: list = []

        async def one() -> None:
            results.append(await client.call_tool("generate_video", VIDEO))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
        status = await call(client, "budget_status")
    assert sum(not r.is_error for r in results) == len(sandbox.tasks) == 3
    assert status["spent"] + status["reserved"] == 3 * VIDEO_COST <= status["budget"]


async def cancel_in_flight(sandbox: Sandbox, route: str, call: Callable[[], Awaitable[object]]) -> None:
    """Run `call`, hold its request of `route` at the sandbox, cancel the call while it is held there, then
    let the request go on."""
    held, sent = gate(sandbox, route), sandbox.requests[route]
    scope = anyio.CancelScope()

    async def calling() -> None:
        with scope:
            await call()

    async with anyio.create_task_group() as group:
        group.start_soon(calling)
        await wait_until(lambda: sandbox.requests[route] > sent)
        scope.cancel()  # while the request is held at the sandbox, unanswered
        held.set()


async def test_a_cancelled_call_keeps_its_task_and_leaks_no_reservation(
    sandbox_server: SandboxServer, held: Sandbox
) -> None:
    async with running_service(sandbox_server, 100) as service:
        await service.models()  # catalogue cached: what follows is the estimate, then the create
        generate = lambda: service.generate(VideoRequest.model_validate(VIDEO))  # noqa: E731
        await cancel_in_flight(held, "POST /v1/videos", generate)
        assert len(held.tasks) == 1, "the create went through despite the cancellation"
        (task_id,) = held.tasks
        tracked = service.registry.get(task_id)
        assert tracked is not None and tracked.reservation is not None, "the created task id was kept"
        assert tracked.reservation.task_id == task_id and (await totals(service)).reserved == VIDEO_COST
        await advance(sandbox_server, task_id)
        with anyio.fail_after(20):
            tracked = await service.registry.wait(task_id, math.inf)
        assert tracked.task.is_terminal
        assert await totals(service) == Totals(100, VIDEO_COST, 0)


async def test_a_call_cancelled_before_its_create_reserves_nothing(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with running_service(sandbox_server, 100) as service:
        await service.models()
        generate = lambda: service.generate(VideoRequest.model_validate(VIDEO))  # noqa: E731
        await cancel_in_flight(sandbox, "POST /v1/credits/estimate", generate)
        # the call is over, so nothing can follow: no create was sent and nothing is held
        assert sandbox.requests["POST /v1/videos"] == 0
        assert sandbox.tasks == {} and await totals(service) == Totals(100, 0, 0)


async def test_a_create_the_gateway_refuses_releases_its_reservation(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with running_service(sandbox_server, 100) as service:
        sandbox.wallets[KEY].balance = 10  # the gateway wallet cannot pay although the session budget could
        with pytest.raises(InsufficientCreditsError, match="Insufficient credits"):
            await service.generate(VideoRequest.model_validate(VIDEO))
        assert await totals(service) == Totals(100, 0, 0) and sandbox.tasks == {}
