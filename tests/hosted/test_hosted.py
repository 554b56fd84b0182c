"""Hosted mode end to end: uvicorn on loopback, the SDK's Streamable HTTP and SSE clients, the sandbox."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from apikey_mcp.config import Settings
from apikey_mcp.errors import ConfigError
from apikey_mcp.hosted import create_app
from apikey_mcp.sandbox import Sandbox
from tests.hosted.conftest import ALICE, BOB, Hosted
from tests.server.conftest import call, call_error


async def test_estimate_generate_poll_over_each_transport(hosted: Hosted, transport: str, sandbox: Sandbox) -> None:
    async with hosted.connect(transport, ALICE) as client:
        estimate = await call(client, "estimate", model="seedance-2-fast", duration=6)
        created = await call(client, "generate_video", prompt="a harbor", model="seedance-2-fast", duration=6)
        with anyio.fail_after(10):
            done = await call(client, "poll_task", task_id=created["task_id"], wait_seconds=30)
        budget = await call(client, "budget_status")
    assert done["status"] == "succeeded" and done["credits_charged"] == estimate["credits"] == 48
    assert (budget["spent"], budget["reserved"]) == (48, 0)
    assert len(sandbox.tasks) == 1


async def test_principals_have_separate_budgets_and_cannot_see_each_others_tasks(hosted: Hosted) -> None:
    async with hosted.connect("streamable-http", ALICE) as alice, hosted.connect("sse", BOB) as bob:
        created = await call(alice, "generate_image", prompt="alice's", model="flux-schnell")
        task_id = created["task_id"]
        seen_by_bob = await call_error(bob, "poll_task", task_id=task_id, wait_seconds=0)
        with pytest.raises(MCPError, match="No task"):
            await bob.read_resource(f"apikey://tasks/{task_id}")
        alice_budget = await call(alice, "budget_status")
        bob_budget = await call(bob, "budget_status")
        from mcp.types import ResourceTemplateReference

        reference = ResourceTemplateReference(type="ref/resource", uri="apikey://tasks/{task_id}")
        bob_ids = (await bob.complete(reference, {"name": "task_id", "value": ""})).completion.values
        alice_ids = (await alice.complete(reference, {"name": "task_id", "value": ""})).completion.values
    assert "task_not_found" in seen_by_bob
    assert alice_budget["spent"] + alice_budget["reserved"] == 2 and bob_budget["spent"] == bob_budget["reserved"] == 0
    assert alice_ids == [task_id] and bob_ids == []


async def test_reconnecting_does_not_reset_a_budget(hosted: Hosted, transport: str) -> None:
    async with hosted.connect(transport, ALICE) as client:
        created = await call(client, "generate_music", prompt="a theme", model="music-1", duration=30)
        await call(client, "poll_task", task_id=created["task_id"], wait_seconds=30)
    for again in ("streamable-http", "sse"):
        async with hosted.connect(again, ALICE) as client:
            budget = await call(client, "budget_status")
            assert (budget["budget"], budget["spent"], budget["remaining"]) == (1000, 30, 970)


async def test_a_restart_on_the_same_state_file_keeps_every_budget(hosted_factory, sandbox: Sandbox) -> None:
    first = hosted_factory()
    async with first.connect("streamable-http", BOB) as client:
        created = await call(client, "generate_image", prompt="kept", model="seedream-4")
        await call(client, "poll_task", task_id=created["task_id"], wait_seconds=30)
    second = hosted_factory()  # same state file, new process state
    async with second.connect("sse", BOB) as client:
        budget = await call(client, "budget_status")
    assert budget["spent"] == 6 and budget["remaining"] == 994


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
@pytest.mark.parametrize("token", [None, "not-a-valid-token-at-all", ALICE + "x"])
async def test_a_missing_or_wrong_token_is_401_with_www_authenticate(hosted: Hosted, path: str, token) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient() as http:
        if path == "/mcp":
            response = await http.post(f"{hosted.url}{path}", headers=headers, json={})
        else:
            response = await http.get(f"{hosted.url}{path}", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
async def test_a_foreign_host_header_is_rejected(hosted: Hosted, path: str) -> None:
    headers = {
        "Authorization": f"Bearer {ALICE}",
        "Host": "evil.example:80",
        "Accept": "application/json, text/event-stream",
    }
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
    async with httpx2.AsyncClient() as http:
        if path == "/mcp":
            response = await http.post(f"{hosted.url}{path}", headers=headers, json=body)
        else:
            response = await http.get(f"{hosted.url}{path}", headers=headers)
    assert response.status_code == 421


async def test_a_foreign_origin_is_rejected(hosted: Hosted) -> None:
    headers = {"Authorization": f"Bearer {ALICE}", "Accept": "application/json, text/event-stream"}
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
    async with httpx2.AsyncClient() as http:
        foreign = await http.post(f"{hosted.url}/mcp", headers=headers | {"Origin": "https://evil.example"}, json=body)
        own = await http.post(f"{hosted.url}/mcp", headers=headers, json=body)  # the same request, no foreign Origin
    assert foreign.status_code == 403 and own.status_code == 200


async def test_an_oversized_body_is_refused(hosted: Hosted) -> None:
    headers = {
        "Authorization": f"Bearer {ALICE}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    async with httpx2.AsyncClient() as http:
        response = await http.post(f"{hosted.url}/mcp", headers=headers, content=b"[" + b" " * (2 * 1024**2) + b"]")
        hook = await http.post(f"{hosted.url}/webhooks/api-key", content=b"x" * (2 * 1024**2))
    assert response.status_code == 413 and hook.status_code == 413


async def test_healthz_answers_without_a_token(hosted: Hosted) -> None:
    async with httpx2.AsyncClient() as http:
        response = await http.get(f"{hosted.url}/healthz")
    assert response.status_code == 200 and response.json()["alive"] is True


def test_a_public_bind_without_tokens_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no client authentication"):
        create_app(Settings(transport="http", host="0.0.0.0", state_file=tmp_path / "s.db"))  # noqa: S104
    with pytest.raises(ConfigError, match="APIKEY_WEBHOOK_SECRET"):
        create_app(Settings(transport="http", public_url="https://x.example", state_file=tmp_path / "s.db"))
