"""The tool list every session pays for in context: small, written for an agent, and exact about results."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from mcp import Client

from apikey_mcp.results import COST_META
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.server import build_server
from tests.conftest import KEY
from tests.server.conftest import call, connect, settings_for

MAX_TOOL_LIST_BYTES = 12_500  # 12 000, plus the apps bound in `_meta.ui` and their results' schema_version
MODALITY_OF_TOOL = {"generate_image": "image", "generate_video": "video", "generate_music": "music",
                    "chat_completion": "chat", "create_embeddings": "embedding"}  # fmt: skip


def nodes(schema: Any, depth: int = 0):
    """Every (sub)schema with its depth in the tree."""
    if isinstance(schema, dict):
        yield schema, depth
        for key, value in schema.items():
            if key == "properties":
                for sub in value.values():
                    yield from nodes(sub, depth + 1)
            elif isinstance(value, dict | list):
                yield from nodes(value, depth + 1)
    elif isinstance(schema, list):
        for item in schema:
            yield from nodes(item, depth)


async def test_the_serialized_tool_list_is_at_most_12_kb(sandbox_server: SandboxServer) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        listed = await client.list_tools()
    wire = json.dumps(listed.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":"))
    assert len(listed.tools) == 10
    assert len(wire.encode()) <= MAX_TOOL_LIST_BYTES, len(wire.encode())


async def test_descriptions_are_plain_text_for_an_agent_and_every_parameter_is_described(
    sandbox_server: SandboxServer,
) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        tools = (await client.list_tools()).tools
        catalogue = {m["id"]: m["modality"] for m in (await call(client, "list_models"))["models"]}
    for tool in tools:
        text = tool.description or ""
        assert text and not re.search(r"\n\s|\s{2,}", text), f"{tool.name}: indented or ragged: {text!r}"
        assert ("Free" in text) != ("Costs" in text), f"{tool.name} must say whether it costs: {text}"
        for name, spec in tool.input_schema["properties"].items():
            assert spec.get("description"), f"{tool.name}.{name} has no description"
        model = tool.input_schema["properties"].get("model", {})
        example = re.search(r"e\.g\. '([^']+)'", model.get("description", ""))
        if tool.name in MODALITY_OF_TOOL:
            assert example and catalogue[example.group(1)] == MODALITY_OF_TOOL[tool.name], tool.name


async def test_output_schemas_are_flat_and_say_nothing_of_our_internals(sandbox_server: SandboxServer) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        schema = tool.output_schema
        assert schema is not None and schema["type"] == "object", tool.name
        for node, depth in nodes(schema):
            assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"} & set(node), (tool.name, node)
            assert depth <= 6, (tool.name, node)
            words = str(node.get("description", "")).lower()
            assert not re.search(r"\bwe\b|\bour\b|catalogue entry|pydantic", words), (tool.name, words)
        for node, _ in nodes(tool.input_schema):
            assert not {"$ref", "$defs", "title"} & set(node), (tool.name, node)


async def test_every_result_matches_its_published_schema_and_paid_ones_carry_their_cost(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    calls = [
        ("list_models", {"modality": "video"}),
        ("estimate", {"model": "seedance-2-fast", "duration": 5}),
        ("generate_image", {"prompt": "a fox", "model": "flux-schnell"}),
        ("generate_music", {"prompt": "a waltz", "model": "music-1", "duration": 10}),
        ("chat_completion", {"model": "gpt-4o-mini", "prompt": "hello"}),
        ("create_embeddings", {"model": "embed-small", "input": ["a", "b"]}),
        ("budget_status", {}),
        ("request_budget_increase", {"credits": 10, "reason": "more"}),
    ]
    async with connect("memory", settings_for(sandbox_server)) as client:
        schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        results = [(tool, await client.call_tool(tool, arguments)) for tool, arguments in calls]
        task_id = results[2][1].structured_content["task_id"]
        results.append(("poll_task", await client.call_tool("poll_task", {"task_id": task_id, "wait_seconds": 10})))
    for tool, result in results:
        assert not result.is_error, (tool, result.content)
        jsonschema.validate(result.structured_content, schemas[tool])
        data = result.structured_content
        if tool in ("generate_image", "generate_music", "chat_completion", "create_embeddings", "poll_task"):
            cost = result.meta[COST_META]
            assert cost["budget"] == data["budget"] and set(data["budget"]) == {
                "budget",
                "spent",
                "reserved",
                "remaining",
            }
            assert cost.get("credits_reserved") == data.get("credits_reserved")
            assert cost.get("credits_charged") == data.get("credits_charged")
            assert cost.get("credits_reserved", cost.get("credits_charged", 0)) > 0
        else:
            assert result.meta is None or COST_META not in result.meta
    assert results[-1][1].structured_content["status"] == "succeeded"


async def test_open_reservations_are_paged_in_budget_status_and_absent_from_paid_results() -> None:
    with SandboxServer(Sandbox([KEY], credits=10_000, task_seconds=3600)) as slow:
        async with Client(build_server(settings_for(slow))) as client:
            started = [await call(client, "generate_image", prompt=f"fox {i}", model="flux-schnell") for i in range(5)]
            first = await call(client, "budget_status", limit=2)
            last = await call(client, "budget_status", limit=2, offset=4)
            everything = json.loads((await client.read_resource("apikey://budget")).contents[0].text)
    assert all("open_reservations" not in s["budget"] for s in started)
    assert first["open_count"] == last["open_count"] == everything["open_count"] == 5
    assert [r["task_id"] for r in first["open_reservations"]] == [s["task_id"] for s in started[:2]]
    assert first["next_offset"] == 2 and "next_offset" not in last
    assert [r["task_id"] for r in last["open_reservations"]] == [started[4]["task_id"]]
    assert len(everything["open_reservations"]) == 5
    assert first["reserved"] == sum(s["credits_reserved"] for s in started)
