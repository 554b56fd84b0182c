"""Bad input gets a clear error the agent can act on: never a traceback, never a half-done paid action."""

from __future__ import annotations

import pytest

from apikey_mcp.config import Settings
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.server.conftest import answering, call, call_error, connect, no_wait, settings_for


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("generate_video", {"prompt": "x", "model": "no-such-model"}, ["no model 'no-such-model'", "seedance-2"]),
        ("generate_video", {"prompt": "x", "model": "seedream-4"}, ["image model", "Video models"]),
        ("generate_video", {"prompt": "x", "model": "seedance-2", "duration": -5}, ["duration: must be at least 1"]),
        ("generate_video", {"prompt": "", "model": "seedance-2"}, ["prompt: must not be empty"]),
        ("generate_video", {"prompt": "x", "model": "seedance-2", "duration": 7}, ["duration", "[5, 6, 8, 10]"]),
        ("generate_video", {"prompt": "x", "model": "seedance-2", "input_mode": "image-to-video"}, ["image_url"]),
        ("generate_image", {"prompt": "x", "model": "seedream-4", "size": "3x3"}, ["size", "1024x1024"]),
        ("estimate", {"model": "nope"}, ["no model 'nope'", "list_models"]),
        ("poll_task", {"task_id": "task_unknown"}, ["task_not_found", "task id"]),
        ("poll_task", {"task_id": "task_1", "wait_seconds": -1}, ["wait_seconds"]),
        ("chat_completion", {"model": "gpt-4o-mini"}, ["either prompt", "or messages"]),
        ("create_embeddings", {"model": "embed-small", "input": []}, ["input"]),
        ("request_budget_increase", {"credits": 0, "reason": "more"}, ["credits"]),
    ],
)
async def test_bad_input_is_a_clear_error_and_creates_nothing(
    transport: str, sandbox_server: SandboxServer, sandbox: Sandbox, tool: str, arguments: dict, expected: list[str]
) -> None:
    async with connect(transport, settings_for(sandbox_server)) as client:
        text = await call_error(client, tool, **arguments)
        budget = await call(client, "budget_status")
    assert all(part.lower() in text.lower() for part in expected), text
    assert "Traceback" not in text and text.strip() != f"Error executing tool {tool}"  # not a crash
    assert sandbox.tasks == {} and budget["reserved"] == budget["spent"] == 0


async def test_without_a_key_the_server_lists_tools_and_paid_calls_say_how_to_set_it(
    transport: str, sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    settings = Settings(base_url=sandbox_server.url, api_key=None)
    async with connect(transport, settings) as client:
        assert len((await client.list_tools()).tools) == 10
        models = await call(client, "list_models", modality="video")  # public: works without a key
        text = await call_error(client, "generate_video", prompt="x", model="seedance-2-fast")
        poll = await call_error(client, "poll_task", task_id="task_1")
    assert models["count"] == 2
    assert "APIKEY_API_KEY" in text and "--sandbox" in text and "Sandbox switch" in text and "APIKEY_API_KEY" in poll
    assert sandbox.tasks == {} and sandbox.wallets  # nothing was sent that could create


async def test_an_unreachable_gateway_is_reported_plainly(unreachable_url: str) -> None:
    settings = Settings(base_url=unreachable_url, api_key="k")
    async with connect("memory", settings, server_options={"gateway_sleep": no_wait}) as client:
        text = await call_error(client, "list_models")
        status = await call(client, "budget_status")  # what needs no gateway still works
    assert "Cannot connect" in text and "base URL" in text and status["remaining"] == 1000


# ---------------------------------------------------------------- asking the human for more budget


@pytest.mark.parametrize(
    ("action", "approve", "raised"),
    [("accept", True, True), ("accept", False, False), ("decline", None, False), ("cancel", None, False)],
)
async def test_only_the_human_can_raise_the_budget(
    transport: str, sandbox_server: SandboxServer, action: str, approve: bool | None, raised: bool
) -> None:
    elicitation, asked = answering(action, approve)
    async with connect(transport, settings_for(sandbox_server), elicitation_callback=elicitation) as client:
        result = await call(client, "request_budget_increase", credits=250, reason="a 10 s 1080p video")
    assert len(asked) == 1 and "250 credits" in asked[0] and "a 10 s 1080p video" in asked[0]
    assert result["approved"] is raised and result["budget"]["budget"] == (1250 if raised else 1000)


async def test_without_elicitation_the_agent_is_told_how_the_human_raises_it(
    transport: str, sandbox_server: SandboxServer
) -> None:
    async with connect(transport, settings_for(sandbox_server)) as client:
        result = await call(client, "request_budget_increase", credits=500, reason="longer video")
    assert result["approved"] is False and result["budget"]["budget"] == 1000
    assert "--budget 1500" in result["message"] and "APIKEY_SESSION_BUDGET=1500" in result["message"]


async def test_a_bug_after_a_task_was_created_is_a_crash_never_nothing_was_sent(
    sandbox_server: SandboxServer, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the one tool mapping worded any pydantic error as "nothing was sent to the gateway", even one
    raised while shaping the answer to a create that had happened. Only a request the contract refuses is that."""
    from pydantic import BaseModel, ValidationError

    from apikey_mcp.results import TaskResult

    class Shaped(BaseModel):
        credits: int

    def broken(self: TaskResult) -> None:
        try:
            Shaped.model_validate({"credits": "many"})
        except ValidationError as exc:  # a bug of ours, standing in for any model we build after the create
            raise exc from None

    monkeypatch.setattr(TaskResult, "started", broken)
    async with connect("memory", settings_for(sandbox_server)) as client:
        text = await call_error(client, "generate_image", prompt="a kite", model="flux-schnell")
    assert text.strip() == "Error executing tool generate_image" and len(sandbox.tasks) == 1
