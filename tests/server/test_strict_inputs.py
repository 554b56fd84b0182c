"""Strict tool inputs: an unknown or invalid argument is refused in our words before anything costs."""

from __future__ import annotations

import re

import pytest

from apikey_mcp.config import Settings
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.server import build_server
from tests.server.conftest import call, call_error, connect, settings_for

EVERY_TOOL_WITH_A_TYPO = [
    ("generate_image", {"prompt": "a fox", "model": "flux-schnell", "colour": "red"}, "colour"),
    ("generate_video", {"prompt": "a fox", "model": "seedance-2-fast", "durtion": 10}, "durtion"),
    ("generate_music", {"prompt": "a waltz", "model": "music-1", "lenght": 30}, "lenght"),
    ("chat_completion", {"model": "gpt-4o-mini", "prompt": "hi", "max_token": 5}, "max_token"),
    ("create_embeddings", {"model": "embed-small", "input": ["a"], "dims": 8}, "dims"),
    ("estimate", {"model": "seedance-2", "durationn": 5}, "durationn"),
    ("poll_task", {"task_id": "task_1", "wait": 5}, "wait"),
    ("request_budget_increase", {"credits": 5, "reason": "x", "answer": {"approve": True}}, "answer"),
    ("budget_status", {"everything": True}, "everything"),
    ("list_models", {"kind": "video"}, "kind"),
]


async def test_the_typo_cases_cover_every_tool() -> None:
    listed = await build_server(Settings()).list_tools()
    assert {tool.name for tool in listed} == {tool for tool, _, _ in EVERY_TOOL_WITH_A_TYPO}


@pytest.mark.parametrize(("tool", "arguments", "unknown"), EVERY_TOOL_WITH_A_TYPO)
async def test_an_unknown_argument_is_refused_before_anything_is_estimated_or_created(
    sandbox_server: SandboxServer, sandbox: Sandbox, tool: str, arguments: dict, unknown: str
) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        schema = next(t for t in (await client.list_tools()).tools if t.name == tool).input_schema
        text = await call_error(client, tool, **arguments)
        budget = await call(client, "budget_status")
    accepted = ", ".join(schema["properties"])
    assert schema["additionalProperties"] is False
    assert f"- {unknown}: not an argument of {tool}. It accepts: {accepted}." in text, text
    assert "nothing was estimated, reserved or created" in text
    assert sandbox.tasks == {} and budget["reserved"] == budget["spent"] == 0 and budget["budget"] == 1000
    assert not [r for r in sandbox.requests if r.startswith("POST")]  # not even an estimate


@pytest.mark.parametrize(
    ("tool", "arguments", "lines"),
    [
        ("generate_video", {"prompt": "x", "model": "seedance-2", "duration": -5},
         ["- duration: must be at least 1 (got -5)."]),
        ("generate_image", {"prompt": "x", "model": "flux-schnell", "n": "two"},
         ["- n: must be a whole number (got 'two')."]),
        ("generate_image", {"prompt": "x" * 1_000_000, "model": "flux-schnell"},
         ["- prompt: is 1000000 characters long; at most 8000 are allowed."]),
        ("poll_task", {"task_id": "task_1", "wait_seconds": 999}, ["- wait_seconds: must be at most 55 (got 999)."]),
        ("generate_video", {"model": "seedance-2", "input_mode": "sideways", "duration": 1.5},
         ["- prompt: required, and missing.",
          "- duration: must be a whole number (got 1.5).",
          "- input_mode: must be one of 'text-to-video', 'image-to-video' or 'video-to-video' (got 'sideways')."]),
        ("chat_completion", {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "hi"}]},
         ["- messages[0].role: must be one of"]),
        ("chat_completion", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]},
         ["- messages[0].content: must be a text or a list (got 5)."]),
        ("generate_image", {"prompt": "x", "model": "flux-schnell", "image_urls": ["not a url"]},
         ["- image_urls[0]: must be an http(s) URL (got 'not a url')."]),
    ],
)  # fmt: skip
async def test_argument_errors_are_one_line_per_field_in_our_words(
    sandbox_server: SandboxServer, sandbox: Sandbox, tool: str, arguments: dict, lines: list[str]
) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        text = await call_error(client, tool, **arguments)
    body = text.splitlines()[1:]
    assert len(body) == len(lines), text
    for line in lines:
        assert any(got.startswith(line) for got in body), text
    assert "pydantic" not in text.lower() and not re.search(r"https?://", text) and "validation error" not in text
    assert len(text) < 600 and sandbox.tasks == {}
