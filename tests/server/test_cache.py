"""The gateway answers everyone shares (models, docs): concurrent misses make one request, not one each."""

from __future__ import annotations

import anyio
from anyio.lowlevel import checkpoint

from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.shared_cache import Cache
from tests.conftest import gate, wait_until
from tests.server.conftest import call, connect, settings_for


async def test_concurrent_misses_of_one_key_make_one_fetch_and_share_its_answer() -> None:
    cache, fetches, release = Cache(), [], anyio.Event()
    answers: list[str] = []

    async def fetch() -> str:
        fetches.append(1)
        await release.wait()
        return "models"

    async def get() -> None:
        answers.append(await cache.get("models", 60, fetch))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(get)
        await anyio.wait_all_tasks_blocked()  # every caller is now waiting: one in fetch, nine behind it
        assert len(fetches) == 1
        release.set()
    assert answers == ["models"] * 10 and len(fetches) == 1


async def test_an_expired_entry_is_fetched_again() -> None:
    cache, fetches = Cache(), []

    async def fetch() -> int:
        fetches.append(1)
        await checkpoint()
        return len(fetches)

    first = await cache.get("docs", 0, fetch)  # expires at once
    second = await cache.get("docs", 0, fetch)
    kept = await cache.get("models", 60, fetch)
    assert (first, second, kept, await cache.get("models", 60, fetch)) == (1, 2, 3, 3)


async def test_a_slow_fetch_of_one_key_does_not_hold_up_another() -> None:
    cache, release = Cache(), anyio.Event()

    async def slow() -> str:
        await release.wait()
        return "docs"

    async def quick() -> str:
        return "models"

    async with anyio.create_task_group() as group:
        group.start_soon(cache.get, "docs", 60, slow)
        await anyio.wait_all_tasks_blocked()  # the docs fetch is under way
        with anyio.fail_after(5):
            assert await cache.get("models", 60, quick) == "models"
        release.set()


async def test_concurrent_list_models_calls_reach_the_gateway_once(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        counts: list[int] = []

        async def listing() -> None:
            counts.append((await call(client, "list_models", modality="video"))["count"])

        held = gate(sandbox, "GET /v1/models")  # the first request waits at the sandbox...
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(listing)
            await wait_until(lambda: sandbox.requests["GET /v1/models"] >= 1)
            await anyio.wait_all_tasks_blocked()  # ...until every call has arrived and waits behind it
            held.set()
    assert counts == [counts[0]] * 8 and counts[0] > 0
    assert sandbox.requests["GET /v1/models"] == 1
