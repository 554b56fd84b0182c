"""The gateway answers everyone shares (models, docs): concurrent misses make one request, not one each."""

from __future__ import annotations

import anyio
from anyio.lowlevel import checkpoint

from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.service import Cache
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


async def test_an_expired_entry_is_fetched_again_and_other_keys_do_not_wait() -> None:
    cache, fetches = Cache(), []

    async def fetch() -> int:
        fetches.append(1)
        await checkpoint()
        return len(fetches)

    first = await cache.get("docs", 0, fetch)  # expires at once
    second = await cache.get("docs", 0, fetch)
    other = await cache.get("models", 60, fetch)
    assert (first, second, other) == (1, 2, 3)


async def test_concurrent_list_models_calls_reach_the_gateway_once(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    sandbox.faults.latency = 0.3  # the first request is still in flight when the others arrive
    async with connect("memory", settings_for(sandbox_server)) as client:
        counts: list[int] = []

        async def listing() -> None:
            counts.append((await call(client, "list_models", modality="video"))["count"])

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(listing)
    assert counts == [counts[0]] * 8 and counts[0] > 0
    assert sandbox.requests["GET /v1/models"] == 1
