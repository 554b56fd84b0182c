"""Per-principal limits: one principal holding every session, SSE stream and listen stream it may open locks
nobody else out."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import advance, wait_until
from tests.hosted.conftest import ALICE, BOB, Hosted, post_initialize
from tests.server.conftest import call

LIMITS = {"max_sessions_per_principal": 2, "max_sse_streams_per_principal": 2, "max_listens_per_principal": 2}


@pytest.fixture
def limited(hosted_factory) -> Hosted:
    return hosted_factory(**LIMITS)


async def test_a_principal_at_every_limit_never_blocks_another(limited: Hosted) -> None:
    async with AsyncExitStack() as alice:
        # 2025-era clients open sessions; 2026-07-28 ones open none, but listen
        sessions = [
            await alice.enter_async_context(limited.connect("streamable-http", ALICE, mode="legacy")) for _ in range(2)
        ]
        streams = [await alice.enter_async_context(limited.connect("sse", ALICE)) for _ in range(2)]
        modern = await alice.enter_async_context(limited.connect("streamable-http", ALICE))
        task_id = (await call(modern, "generate_image", prompt="mine", model="flux-schnell"))["task_id"]
        uri = f"apikey://tasks/{task_id}"
        for _ in range(2):
            await alice.enter_async_context(modern.listen(resource_subscriptions=[uri]))

        third_session = await post_initialize(f"{limited.url}/mcp", ALICE)
        async with httpx2.AsyncClient(timeout=10) as http:
            third_stream = await http.get(f"{limited.url}/sse", headers={"Authorization": f"Bearer {ALICE}"})
        with pytest.raises(MCPError, match="Too many listen streams"):
            async with modern.listen(resource_subscriptions=[uri]):
                pass
        assert third_session.status_code == third_stream.status_code == 429
        assert "retry-after" in third_session.headers and "Too many open sessions" in third_session.text
        assert (await call(sessions[1], "budget_status"))["budget"] == 1000  # what is open still works
        assert (await call(streams[0], "budget_status"))["budget"] == 1000

        async with (
            limited.connect("streamable-http", BOB) as bob_http,
            limited.connect("streamable-http", BOB, mode="legacy") as bob_session,
            limited.connect("sse", BOB) as bob_sse,
        ):
            assert (await call(bob_session, "budget_status"))["budget"] == 1000
            bob_task = (await call(bob_http, "generate_image", prompt="bob's", model="flux-schnell"))["task_id"]
            async with bob_http.listen(resource_subscriptions=[f"apikey://tasks/{bob_task}"]) as heard:
                assert heard.honored.resource_subscriptions == [f"apikey://tasks/{bob_task}"]
            assert (await call(bob_sse, "budget_status"))["budget"] == 1000


async def test_a_closed_session_frees_its_slot(limited: Hosted) -> None:
    for _ in range(3):  # more than the limit, one after the other
        async with limited.connect("streamable-http", ALICE, mode="legacy") as client:
            await call(client, "budget_status")
    async with limited.connect("streamable-http", ALICE, mode="legacy"):
        opened: list[int] = []

        async def admitted() -> bool:  # the first three are gone once their DELETEs are served
            opened.append((await post_initialize(f"{limited.url}/mcp", ALICE)).status_code)
            return opened[-1] != 429

        await wait_until(admitted)
    assert opened[-1] == 200


async def test_a_listener_hears_only_its_own_tasks(hosted_factory, held, sandbox_server) -> None:
    hosted: Hosted = hosted_factory(**LIMITS)
    async with hosted.connect("streamable-http", ALICE) as alice, hosted.connect("streamable-http", BOB) as bob:
        alices = (await call(alice, "generate_image", prompt="alice's", model="flux-schnell"))["task_id"]
        bobs = (await call(bob, "generate_image", prompt="bob's", model="flux-schnell"))["task_id"]
        alices_uri, bobs_uri = f"apikey://tasks/{alices}", f"apikey://tasks/{bobs}"
        async with (
            bob.listen(resource_subscriptions=[alices_uri, bobs_uri]) as bob_hears,
            alice.listen(resource_subscriptions=[alices_uri]) as alice_hears,
        ):
            await advance(sandbox_server, alices)
            with anyio.fail_after(10):
                alice_first = await alice_hears.__anext__()
            await advance(sandbox_server, bobs)  # after alice's news: bob would have heard that first
            with anyio.fail_after(10):
                bob_first = await bob_hears.__anext__()
    assert bob_hears.honored.resource_subscriptions == [bobs_uri]
    assert alice_first.uri == alices_uri and bob_first.uri == bobs_uri
