"""The MCP Apps as a host finds them: each bound tool names its app, the app is served as an MCP App with the
CSP it needs, results carry what the app reads (versioned) beside their full text, and an image result has a
preview that needs no external origin. In memory and over a real stdio subprocess."""

from __future__ import annotations

import base64
import json
import re

import pytest
from mcp.shared.exceptions import MCPError

from apikey_mcp.config import Settings
from apikey_mcp.mcp_apps import BUDGET_APP, MEDIA_APP
from apikey_mcp.sandbox import SandboxServer, assets
from tests.server.conftest import call, connect, settings_for, text_of

APP_MIME = "text/html;profile=mcp-app"
BOUND = {"generate_image": MEDIA_APP, "generate_video": MEDIA_APP, "generate_music": MEDIA_APP,
         "poll_task": MEDIA_APP, "budget_status": BUDGET_APP}  # fmt: skip
CDN = "https://cdn.example.com"


@pytest.mark.parametrize("transport", ["memory", pytest.param("stdio", marks=pytest.mark.slow)])
async def test_tools_name_their_app_and_each_app_is_served_self_contained_with_its_csp(
    transport: str, sandbox_server: SandboxServer
) -> None:
    settings = settings_for(sandbox_server, media_origins=[f"{CDN}/files/", sandbox_server.url])
    async with connect(transport, settings) as client:
        tools = (await client.list_tools()).tools
        served = {uri: (await client.read_resource(uri)).contents[0] for uri in (MEDIA_APP, BUDGET_APP)}
    for tool in tools:
        assert ((tool.meta or {}).get("ui") or {}).get("resourceUri") == BOUND.get(tool.name), tool.name
        assert "visibility" not in ((tool.meta or {}).get("ui") or {}), "model and app both see every tool"
    for uri, item in served.items():
        html = item.text
        assert item.mime_type == APP_MIME
        assert len(html.encode()) < 1024 * 1024, f"{uri}: {len(html.encode())} bytes"
        assert not re.search(r"<script[^>]*\ssrc=|<link\b|@import|https?://[^\s\"'`)]*\.(js|css)\b", html), uri
        assert "new App" in html or "ui/initialize" in html
    assert served[MEDIA_APP].meta["ui"]["csp"] == {"resourceDomains": [sandbox_server.url, CDN]}
    assert served[BUDGET_APP].meta["ui"]["csp"] == {}


async def test_what_the_apps_read_is_versioned_structured_content_beside_the_full_text(
    sandbox_server: SandboxServer,
) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        started = await client.call_tool("generate_image", {"prompt": "a kite", "model": "flux-schnell"})
        task_id = started.structured_content["task_id"]
        done = await client.call_tool("poll_task", {"task_id": task_id, "wait_seconds": 20})
        budget = await client.call_tool("budget_status", {})
    for result in (started, done, budget):
        assert result.structured_content["schema_version"] == 1
        assert json.loads(result.content[1].text) == result.structured_content  # hosts without Apps read this
    assert task_id in text_of(started) and "credits" in text_of(done) and "Budget:" in text_of(budget)
    assert "base64" not in json.dumps(done.model_dump(mode="json")), "no media bytes in a tool result"


async def test_an_image_output_has_a_preview_as_a_data_uri_and_nothing_else_does(
    sandbox_server: SandboxServer,
) -> None:
    async with connect("memory", settings_for(sandbox_server)) as client:
        image = await call(client, "generate_image", prompt="a heron", model="flux-schnell", n=2)
        music = await call(client, "generate_music", prompt="a march", model="music-1", duration=5)
        for task in (image, music):
            assert (await call(client, "poll_task", task_id=task["task_id"], wait_seconds=20))["status"] == "succeeded"
        preview = (await client.read_resource(f"apikey://tasks/{image['task_id']}/outputs/1/preview")).contents[0]
        refusals = {}
        for uri in (
            f"apikey://tasks/{music['task_id']}/outputs/0/preview",
            f"apikey://tasks/{image['task_id']}/outputs/2/preview",
            f"apikey://tasks/{image['task_id']}/outputs/one/preview",
            "apikey://tasks/task_nope/outputs/0/preview",
        ):
            with pytest.raises(MCPError) as refused:
                await client.read_resource(uri)
            refusals[uri.split("/")[3] + "/" + uri.split("/")[5]] = str(refused.value)
    assert preview.mime_type == "text/uri-list"
    head, encoded = preview.text.split(",", 1)
    assert head == "data:image/png;base64" and base64.b64decode(encoded) == assets.png("a heron")
    music_refused, past_the_end, not_a_number, unknown = refusals.values()
    assert music_refused.startswith("Only images have a preview")
    assert "no output 2" in past_the_end and "not a number" in not_a_number and "No task 'task_nope'" in unknown


def test_media_origins_come_from_the_environment_comma_separated_and_must_be_origins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APIKEY_MEDIA_ORIGINS", "https://files.example.com/x, http://127.0.0.1:9000")
    assert Settings().media_origins == ["https://files.example.com", "http://127.0.0.1:9000"]
    monkeypatch.setenv("APIKEY_MEDIA_ORIGINS", "files.example.com")
    with pytest.raises(ValueError, match=r"must be an http\(s\) origin"):
        Settings()
