"""Resources (the gateway's docs, models, budget, tasks), completion of task ids, and the prompts."""

from __future__ import annotations

import json

import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import ResourceTemplateReference

from apikey_mcp.budget import LedgerUnavailableError, Totals
from apikey_mcp.config import Settings
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.stores import MemoryLedgerStore
from tests.server.conftest import call, connect, no_wait, settings_for

DOCS = {
    "apikey://docs/llms.txt": "text/plain",
    "apikey://docs/auth.md": "text/markdown",
    "apikey://docs/openapi.json": "application/json",
    "apikey://docs/index.md": "text/markdown",
    "apikey://docs/api-catalog": "application/linkset+json",
}


async def read_text(client, uri: str) -> str:
    result = await client.read_resource(uri)
    return result.contents[0].text


async def test_the_gateways_documents_are_resources_with_their_mime_types(
    transport: str, sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with connect(transport, settings_for(sandbox_server)) as client:
        listed = {str(r.uri): r.mime_type for r in (await client.list_resources()).resources}
        texts = {uri: await read_text(client, uri) for uri in DOCS}
        again = await read_text(client, "apikey://docs/llms.txt")
    assert {uri: listed[uri] for uri in DOCS} == DOCS
    assert "/v1/videos" in json.loads(texts["apikey://docs/openapi.json"])["paths"]
    assert texts["apikey://docs/llms.txt"].startswith("# API-Key gateway") and again == texts["apikey://docs/llms.txt"]
    assert sandbox.requests["GET /llms.txt"] == 1  # cached
    assert "Authorization: Bearer YOUR_API_KEY" in texts["apikey://docs/auth.md"]  # a placeholder, not a secret
    assert "Authorization: Bearer KEY" in texts["apikey://docs/llms.txt"]
    assert not any("[redacted]" in text for text in texts.values())


async def test_models_budget_and_task_resources(transport: str, sandbox_server: SandboxServer, held: Sandbox) -> None:
    async with connect(transport, settings_for(sandbox_server)) as client:
        models = json.loads(await read_text(client, "apikey://models"))
        created = await call(client, "generate_image", prompt="a kite", model="flux-schnell")
        budget = json.loads(await read_text(client, "apikey://budget"))
        task = json.loads(await read_text(client, f"apikey://tasks/{created['task_id']}"))
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        with pytest.raises(MCPError, match="No task"):
            await client.read_resource("apikey://tasks/task_nope")
    assert {m["id"] for m in models["data"]} >= {"seedance-2", "seedance-2-fast"}
    assert budget["reserved"] == created["credits_reserved"] > 0
    assert task["task_id"] == created["task_id"] and task["status"] == "pending"  # held until the test moves it
    assert templates == ["apikey://tasks/{task_id}", "apikey://tasks/{task_id}/outputs/{n}/preview"]


class UnreadableStore(MemoryLedgerStore):
    """A memory store whose totals cannot be read once `broken` is set, as a locked database's."""

    broken = False

    async def totals(self, principal: str, *, now: float | None = None) -> Totals:
        if self.broken:
            raise LedgerUnavailableError("database is locked")
        return await super().totals(principal, now=now)


async def test_the_task_resource_says_when_the_ledger_cannot_be_read(sandbox_server: SandboxServer) -> None:
    store = UnreadableStore()
    async with connect("memory", settings_for(sandbox_server), store=store) as client:
        created = await call(client, "generate_image", prompt="a kite", model="flux-schnell")
        store.broken = True
        with pytest.raises(MCPError, match=r"The budget ledger cannot be read now \(database is locked\)"):
            await client.read_resource(f"apikey://tasks/{created['task_id']}")
        with pytest.raises(MCPError, match=r"The budget ledger cannot be read now \(database is locked\)"):
            await client.read_resource("apikey://budget")


async def test_task_ids_complete_from_what_this_session_created(transport: str, sandbox_server: SandboxServer) -> None:
    async with connect(transport, settings_for(sandbox_server)) as client:
        ids = [
            (await call(client, "generate_image", prompt=f"p{i}", model="flux-schnell"))["task_id"] for i in range(3)
        ]
        reference = ResourceTemplateReference(type="ref/resource", uri="apikey://tasks/{task_id}")
        everything = await client.complete(reference, {"name": "task_id", "value": "task_"})
        one = await client.complete(reference, {"name": "task_id", "value": ids[1][:14]})
    assert set(everything.completion.values) == set(ids)
    assert one.completion.values == [ids[1]]


async def test_documents_from_an_unreachable_gateway_are_a_clear_error(unreachable_url: str) -> None:
    settings = Settings(base_url=unreachable_url, api_key="k")
    async with connect("memory", settings, server_options={"gateway_sleep": no_wait}) as client:
        with pytest.raises(MCPError, match=r"Cannot fetch /llms\.txt from the gateway: Cannot connect"):
            await client.read_resource("apikey://docs/llms.txt")


async def test_prompts_walk_through_estimate_confirm_generate_poll(transport: str, sandbox_server: SandboxServer):
    async with connect(transport, settings_for(sandbox_server)) as client:
        names = {p.name for p in (await client.list_prompts()).prompts}
        media = await client.get_prompt("generate_media", {"kind": "music", "brief": "a jingle"})
        plan = await client.get_prompt("plan_within_budget", {"goal": "a trailer"})
    assert names == {"generate_media", "plan_within_budget"}
    text = media.messages[0].content.text
    steps = [text.index(word) for word in ("estimate", "OK", "generate_music", "poll_task")]
    assert steps == sorted(steps) and "a jingle" in text
    assert "a trailer" in plan.messages[0].content.text
