"""The MCP Apps hosted, in both protocol eras: tools name their app, the app is served, and a result's preview
is readable by the principal that made the task only."""

from __future__ import annotations

import pytest
from mcp.shared.exceptions import MCPError

from apikey_mcp.mcp_apps import MEDIA_APP
from tests.hosted.conftest import ALICE, BOB, Hosted
from tests.server.conftest import call


@pytest.mark.parametrize("mode", ["legacy", None])
async def test_apps_and_previews_hosted_for_the_tasks_principal_only(hosted: Hosted, mode: str | None) -> None:
    era = {"mode": mode} if mode else {}
    async with hosted.connect("streamable-http", ALICE, **era) as alice, hosted.connect("sse", BOB) as bob:
        tools = {t.name: t.meta for t in (await alice.list_tools()).tools}
        app = (await alice.read_resource(MEDIA_APP)).contents[0]
        task = await call(alice, "generate_image", prompt="alice's fox", model="flux-schnell")
        await call(alice, "poll_task", task_id=task["task_id"], wait_seconds=20)
        uri = f"apikey://tasks/{task['task_id']}/outputs/0/preview"
        preview = (await alice.read_resource(uri)).contents[0].text
        with pytest.raises(MCPError, match="No task"):
            await bob.read_resource(uri)
    assert tools["generate_video"]["ui"]["resourceUri"] == MEDIA_APP
    assert app.mime_type == "text/html;profile=mcp-app" and app.meta["ui"]["csp"]["resourceDomains"]
    assert preview.startswith("data:image/png;base64,")
