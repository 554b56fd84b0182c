"""What the agent reads says what is true: sandbox links die with the process, one credit is one credit, and a
server with no key says so rather than blaming the network."""

from __future__ import annotations

from apikey_mcp.config import Settings
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import advance
from tests.server.conftest import FAST_POLLING, call, call_error, connect, settings_for, text_of


async def test_a_sandbox_result_does_not_call_its_links_durable(sandbox_server: SandboxServer, held: Sandbox) -> None:
    async with connect("memory", settings_for(sandbox_server, sandbox=True)) as client:
        created = await call(client, "generate_image", prompt="a fox", model="flux-schnell")
        await advance(sandbox_server, created["task_id"])
        done = await call(client, "poll_task", task_id=created["task_id"], wait_seconds=10)
    assert done["status"] == "succeeded"
    assert "durable" not in done["next_step"] and "only while this server runs" in done["next_step"]


async def test_one_credit_is_written_in_the_singular(sandbox_server: SandboxServer) -> None:
    async with connect("memory", settings_for(sandbox_server, session_budget=1)) as client:
        chat = await client.call_tool("chat_completion", {"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 1})
    assert chat.structured_content is not None and chat.structured_content["credits_charged"] == 1
    text = text_of(chat)
    assert "[1 credit. Budget: 0 of 1 credit left" in text and "1 credits" not in text


async def test_without_a_key_a_paid_tool_says_so_not_that_the_gateway_is_unreachable(unreachable_url: str) -> None:
    settings = Settings(base_url=unreachable_url, api_key=None, **FAST_POLLING)
    async with connect("memory", settings) as client:
        text = await call_error(client, "generate_image", prompt="a fox", model="flux-schnell")
    assert "No API key is configured" in text and "APIKEY_API_KEY" in text and "--sandbox" in text
    assert "Cannot connect" not in text
