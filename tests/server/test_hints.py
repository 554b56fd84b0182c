"""Every error's hint points the right way for the call that failed, and the prompts accept only what works."""

from __future__ import annotations

import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.server.conftest import call_error, connect, settings_for


async def test_polling_an_unknown_task_points_to_the_generate_tools_not_to_list_models(
    sandbox_server: SandboxServer,
) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        text = await call_error(client, "poll_task", task_id="task_nobody_made")
    assert "task_nobody_made" in text and "task_not_found" in text
    assert "generate_image, generate_video or generate_music" in text and "list_models" not in text


@pytest.mark.parametrize(
    ("tool", "arguments", "advice"),
    [
        ("chat_completion", {"model": "gpt-4o-mini", "prompt": "hi"}, "a shorter conversation or a lower max_tokens"),
        ("create_embeddings", {"model": "embed-small", "input": ["some text " * 400]}, "fewer or shorter texts"),
        ("generate_video", {"model": "seedance-2", "prompt": "a fox"}, "a shorter or lower-resolution video"),
        ("generate_image", {"model": "flux-schnell", "prompt": "a fox", "n": 4}, "fewer or smaller images"),
        ("generate_music", {"model": "music-1", "prompt": "a waltz"}, "a shorter piece"),
    ],
)
async def test_over_budget_advice_fits_the_kind_of_call(
    sandbox_server: SandboxServer, sandbox: Sandbox, tool: str, arguments: dict, advice: str
) -> None:
    async with connect("memory", settings_for(sandbox_server, session_budget=1)) as client:
        text = await call_error(client, tool, **arguments)
    assert text.count("Over budget") == 1 and f"Try {advice}, or a cheaper model" in text, text
    assert "request_budget_increase" in text and sandbox.tasks == {}
    if tool in ("chat_completion", "create_embeddings", "generate_image"):
        assert "resolution" not in text and "shorter job" not in text


async def test_the_media_prompt_takes_only_image_video_or_music(sandbox_server: SandboxServer) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        music = await client.get_prompt("generate_media", {"kind": "music", "brief": "a calm waltz"})
        with pytest.raises(MCPError) as refused:
            await client.get_prompt("generate_media", {"kind": "podcast"})
        offered = await client.complete(
            PromptReference(type="ref/prompt", name="generate_media"), {"name": "kind", "value": "m"}
        )
    assert set(listed) == {"generate_media", "plan_within_budget"}
    assert all(a.description for p in listed.values() for a in p.arguments or [])
    text = music.messages[0].content.text
    assert "generate_music" in text and "modality='music'" in text and "a calm waltz" in text
    assert "image, video or music" in str(refused.value) and "podcast" in str(refused.value)
    assert offered.completion.values == ["music"]
