"""The paid-call flow end to end through an MCP client, in process, against the sandbox as a real server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest

from apikey_mcp.sandbox import FAIL_MARKER, Sandbox, SandboxServer
from tests.conftest import KEY, advance
from tests.server.conftest import call, call_error, connect, settings_for

JOBS = {
    "video": ("generate_video", {"model": "seedance-2-fast", "duration": 6, "resolution": "720p"}, "video/mp4"),
    "image": ("generate_image", {"model": "seedream-4", "n": 2, "size": "1024x1024"}, "image/png"),
    "music": ("generate_music", {"model": "music-1", "duration": 20}, "audio/wav"),
}


async def poll_until_done(client, task_id: str) -> dict:
    with anyio.fail_after(60):
        while True:
            result = await call(client, "poll_task", task_id=task_id, wait_seconds=30)
            if result["status"] in ("succeeded", "failed"):
                return result


@pytest.mark.parametrize("kind", JOBS)
async def test_estimate_generate_poll_settles_the_budget_to_the_real_charge(
    transport: str, sandbox_server: SandboxServer, sandbox: Sandbox, kind: str
) -> None:
    tool, params, mime = JOBS[kind]
    async with connect(transport, settings_for(sandbox_server, session_budget=500)) as client:
        estimate = await call(client, "estimate", **params)
        assert estimate["fits_budget"] and estimate["credits"] > 0

        created = await call(client, tool, prompt="a calm sea at dawn", **params)
        assert created["status"] == "pending" and created["task_id"].startswith("task_")
        assert created["credits_reserved"] == estimate["credits"]
        assert created["budget"]["reserved"] == estimate["credits"]
        assert created["budget"]["remaining"] == 500 - estimate["credits"]

        done = await poll_until_done(client, created["task_id"])
        assert done["status"] == "succeeded"
        assert done["credits_charged"] == estimate["credits"]
        assert {o["mime_type"] for o in done["outputs"]} == {mime}
        assert len(done["outputs"]) == params.get("n", 1)

        budget = await call(client, "budget_status")
    assert budget == {
        "budget": 500,
        "spent": estimate["credits"],
        "reserved": 0,
        "remaining": 500 - estimate["credits"],
        "open_reservations": [],
        "open_count": 0,
        "schema_version": 1,
        "policy": {"allow": []},
        "period": "none",
    }
    assert sandbox.wallets[KEY].balance == 10_000 - estimate["credits"]


async def test_finished_task_comes_with_resource_links(sandbox_server: SandboxServer) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        created = await call(client, "generate_image", prompt="a fox", model="flux-schnell", n=2)
        await poll_until_done(client, created["task_id"])
        result = await client.call_tool("poll_task", {"task_id": created["task_id"], "wait_seconds": 0})
    links = [block for block in result.content if block.type == "resource_link"]
    assert [(str(link.uri), link.mime_type) for link in links] == [
        (o["url"], "image/png") for o in result.structured_content["outputs"]
    ]
    assert "succeeded" in result.content[0].text


async def test_over_budget_request_is_refused_and_nothing_is_created(
    transport: str, sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with connect(transport, settings_for(sandbox_server, session_budget=50)) as client:
        text = await call_error(client, "generate_video", prompt="an epic", model="seedance-2", duration=10)
        budget = await call(client, "budget_status")
    assert "200 credits" in text and "only 50" in text  # the estimate and what is left
    assert "request_budget_increase" in text and "cheaper" in text  # and what to do
    assert "POST /v1/videos" not in sandbox.requests and sandbox.tasks == {}
    assert (sandbox.wallets[KEY].balance, sandbox.wallets[KEY].reserved) == (10_000, 0)
    assert (budget["spent"], budget["reserved"], budget["remaining"]) == (0, 0, 50)


async def test_failed_task_releases_its_reservation(transport: str, sandbox_server: SandboxServer) -> None:
    async with connect(transport, settings_for(sandbox_server)) as client:
        created = await call(client, "generate_video", prompt=f"doomed {FAIL_MARKER}", model="seedance-2-fast")
        assert created["budget"]["reserved"] == 40
        done = await poll_until_done(client, created["task_id"])
        budget = await call(client, "budget_status")
    assert done["status"] == "failed" and "released" in done["next_step"] and done["error"]
    assert (budget["spent"], budget["reserved"], budget["remaining"]) == (0, 0, 1000)


async def test_chat_is_reserved_from_a_bound_and_settled_from_usage(
    transport: str, sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with connect(transport, settings_for(sandbox_server, session_budget=100)) as client:
        chat = await call(client, "chat_completion", model="gpt-4o-mini", prompt="Say hi", max_tokens=2000)
        embeddings = await call(client, "create_embeddings", model="embed-small", input=["alpha", "beta"])
        budget = await call(client, "budget_status")
    assert "Say hi" in chat["content"] and chat["usage"]["total_tokens"] > 0
    assert chat["credits_charged"] == 1  # the bound (2000 tokens out) reserved 9; usage settled it at 1
    assert embeddings["dimensions"] == 256 and len(embeddings["embeddings"]) == 2
    assert (
        budget["spent"]
        == chat["credits_charged"] + embeddings["credits_charged"]
        == 10_000 - sandbox.wallets[KEY].balance
    )
    assert budget["reserved"] == 0


async def test_chat_whose_bound_does_not_fit_is_refused_before_it_is_sent(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with connect("memory", settings_for(sandbox_server, session_budget=5)) as client:
        text = await call_error(client, "chat_completion", model="gpt-4o-mini", prompt="Hi", max_tokens=30_000)
    assert "Over budget" in text and "POST /v1/chat/completions" not in sandbox.requests


async def test_poll_sends_progress_on_each_status_change(sandbox_server: SandboxServer, held: Sandbox) -> None:
    seen: list[tuple[float, str | None]] = []
    news = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        nonlocal news
        seen.append((progress, message))
        news.set()
        news = anyio.Event()

    async def heard(status: str) -> None:
        with anyio.fail_after(20):
            while not any(status in (m or "") for _, m in seen):
                await news.wait()

    result: dict = {}
    async with connect("memory", settings_for(sandbox_server)) as client:
        task_id = (await call(client, "generate_music", prompt="lofi", model="music-1", duration=10))["task_id"]

        async def polling() -> None:
            arguments = {"task_id": task_id, "wait_seconds": 30}
            answer = await client.call_tool("poll_task", arguments, progress_callback=on_progress)
            result.update(answer.structured_content or {})

        async with anyio.create_task_group() as group:
            group.start_soon(polling)
            await heard("pending")
            await advance(sandbox_server, task_id, "running", progress=0.5)
            await heard("running")
            await advance(sandbox_server, task_id)
    assert result["status"] == "succeeded"
    values = [p for p, _ in seen]
    assert values == sorted(values) and values[-1] == 100
    assert (50.0, f"{task_id}: running") in seen and "succeeded" in (seen[-1][1] or "")


async def test_poll_returns_when_its_wait_runs_out(sandbox_server: SandboxServer, held: Sandbox) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        created = await call(client, "generate_image", prompt="slow", model="flux-schnell")
        started = anyio.current_time()
        with anyio.fail_after(20):
            result = await call(client, "poll_task", task_id=created["task_id"], wait_seconds=0.2)
        waited = anyio.current_time() - started
    assert result["status"] == "pending" and "poll_task" in result["next_step"]
    assert waited >= 0.2  # it did wait (a lower bound only: a busy machine can only make it longer)


async def test_output_dir_gets_the_files_with_safe_names(sandbox_server: SandboxServer, tmp_path) -> None:
    async with connect("memory", settings_for(sandbox_server, output_dir=tmp_path)) as client:
        created = await call(client, "generate_image", prompt="two cats", model="flux-schnell", n=2)
        done = await poll_until_done(client, created["task_id"])
    paths = [o["path"] for o in done["outputs"]]
    digest = hashlib.sha256(created["task_id"].encode()).hexdigest()[:10]
    assert paths == [str(tmp_path / f"{created['task_id']}-{digest}-{i}.png") for i in range(2)]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in paths)
