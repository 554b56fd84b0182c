"""Each MCP App rendered the way a host does: headless Debian Chromium loads the HTML our server serves, under
the CSP it declares, in a sandboxed iframe behind the official AppBridge (tests/hosted/node/apps_host.mjs), and
gets a real tool result from our server on the sandbox. What a person would see is asserted: the image drawn,
the video and the audio loaded, the cost and the budget as text, no CSP violation; a screenshot of each app is
saved. The app's own calls (poll_task, the preview resource) go back through the host to our server.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from subprocess import PIPE
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client
from mcp.types import CallToolResult

from apikey_mcp.mcp_apps import BUDGET_APP, MEDIA_APP
from apikey_mcp.sandbox import SandboxServer
from apikey_mcp.server import build_server
from tests.conftest import advance
from tests.node import NODE_DIR, node_package
from tests.provision import program
from tests.server.conftest import call, settings_for

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
APPS_DIR = Path(__file__).parents[2] / "apps"
SCREENSHOTS = os.environ.get("APIKEY_TEST_SCREENSHOTS")  # also keep them here (docs/ takes one from a run)


def wire(result: Any) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def render(
    client: Client,
    uri: str,
    tool_name: str,
    result: CallToolResult,
    tmp_path: Path,
    name: str,
    *,
    expect: str,
    tool_input: dict[str, Any] | None = None,
    theme: str = "light",
    on_call: Any = None,
    ignore_csp_domains: bool = False,
) -> dict[str, Any]:
    """Render the app at `uri` with `tool_name`'s `result` in Chromium; what the page showed, once `expect` is
    seen (`tool_input`: the arguments, which a host sends the app first)."""
    node_package("playwright-core/package.json")
    program("chromium")  # a skip naming the package, a failure in CI
    if not (APPS_DIR / "node_modules" / "esbuild").exists():
        pytest.fail("the apps' npm packages are missing: the session's `npm ci --prefix apps` failed")
    served = (await client.read_resource(uri)).contents[0]
    tool = next(t for t in (await client.list_tools()).tools if t.name == tool_name)  # the host's context names it
    assert tool.meta["ui"]["resourceUri"] == uri
    assert served.mime_type == "text/html;profile=mcp-app"
    csp = {} if ignore_csp_domains else served.meta["ui"]["csp"]  # a host that ignores declared domains has none
    job = {
        "html": served.text,
        "csp": csp,
        "tool": wire(tool),
        "result": wire(result),
        "input": tool_input,
        "theme": theme,
        "expect": expect,
        "screenshot": str(tmp_path / f"{name}.png"),
        "apps_dir": str(APPS_DIR),
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(job))
    host = [shutil.which("node") or "node", str(NODE_DIR / "apps_host.mjs"), str(tmp_path / f"{name}.json")]
    writing = anyio.Lock()
    with anyio.fail_after(150):
        async with await anyio.open_process(host, stdin=PIPE, stdout=PIPE, stderr=PIPE) as process:
            assert process.stdin is not None and process.stdout is not None

            async def answer(message: dict[str, Any]) -> None:
                """The host proxies an app request to our server, as a real host does."""
                try:
                    if on_call is not None:
                        await on_call(message)
                    params = message["params"]
                    if message["method"] == "tools/call":
                        reply = {"result": wire(await client.call_tool(params["name"], params.get("arguments", {})))}
                    else:
                        reply = {"result": wire(await client.read_resource(params["uri"]))}
                except Exception as exc:  # the app is told, as a host would tell it
                    reply = {"error": str(exc)}
                async with writing:
                    await process.stdin.send((json.dumps({"id": message["id"], **reply}) + "\n").encode())  # type: ignore[union-attr]

            lines = BufferedByteReceiveStream(process.stdout)
            async with anyio.create_task_group() as group:
                while True:
                    message = json.loads(await lines.receive_until(b"\n", 16 * 1024 * 1024))
                    if "done" in message:
                        group.cancel_scope.cancel()
                        break
                    group.start_soon(answer, message)
    seen: dict[str, Any] = message["done"]
    assert "error" not in seen, seen["error"] + "\n" + "\n".join(seen["console"])
    if not ignore_csp_domains:
        assert seen["violations"] == [], seen["violations"]
        assert not [line for line in seen["console"] if "Content Security Policy" in line], seen["console"]
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", Path(SCREENSHOTS) / f"{name}.png")
    return seen


async def test_the_media_app_follows_a_running_image_task_through_the_host_and_draws_the_image(
    sandbox_server: SandboxServer, held: Any, tmp_path: Path
) -> None:
    arguments = {"prompt": "a red fox in the snow", "model": "flux-schnell"}
    async with Client(build_server(settings_for(sandbox_server))) as client:
        started = await client.call_tool("generate_image", arguments)
        task_id = started.structured_content["task_id"]
        polls: list[str] = []

        async def on_call(message: dict[str, Any]) -> None:
            """The app polls the pending task by itself; the first poll lets the task end."""
            if message["params"].get("name") == "poll_task":
                polls.append(message["params"]["arguments"]["task_id"])
                if len(polls) == 1:
                    await advance(sandbox_server, task_id)

        seen = await render(
            client,
            MEDIA_APP,
            "generate_image",
            started,
            tmp_path,
            "media-image",
            expect="image",
            tool_input=arguments,
            on_call=on_call,
        )
        charged = (await client.call_tool("budget_status", {})).structured_content
    assert polls and set(polls) == {task_id}
    assert seen["images"] and seen["images"][0]["naturalWidth"] > 0
    assert seen["images"][0]["src"].startswith(sandbox_server.url)  # from its link: the declared origin loads
    assert "succeeded" in seen["text"] and f"Cost: {charged['spent']} credits" in seen["text"]
    assert f"Budget: {charged['remaining']:,} credits left of {charged['budget']:,}" in seen["text"]
    assert seen["theme"] == "light"


@pytest.mark.parametrize(("tool", "arguments", "kind"), [
    ("generate_video", {"prompt": "waves at dusk", "model": "seedance-2-fast", "duration": 5}, "video"),
    ("generate_music", {"prompt": "a slow waltz", "model": "music-1", "duration": 10}, "audio"),
])  # fmt: skip
async def test_the_media_app_plays_a_finished_video_and_music_from_their_declared_origin(
    sandbox_server: SandboxServer, tmp_path: Path, tool: str, arguments: dict[str, Any], kind: str
) -> None:
    async with Client(build_server(settings_for(sandbox_server))) as client:
        started = await client.call_tool(tool, arguments)
        task_id = started.structured_content["task_id"]
        result = await client.call_tool("poll_task", {"task_id": task_id, "wait_seconds": 20})
        assert result.structured_content["status"] == "succeeded"
        seen = await render(
            client, MEDIA_APP, "poll_task", result, tmp_path, f"media-{kind}", expect=kind, theme="dark"
        )
    data = result.structured_content
    assert max(seen[f"{kind}s"]) >= 2  # HAVE_CURRENT_DATA: the browser fetched and decoded it
    assert f"Cost: {data['credits_charged']} credits" in seen["text"]
    assert f"Budget: {data['budget']['remaining']:,} credits left of {data['budget']['budget']:,}" in seen["text"]
    assert seen["theme"] == "dark" and seen["background"] != "rgb(255, 255, 255)"


async def test_the_budget_app_shows_the_gauge_and_the_open_tasks(
    sandbox_server: SandboxServer, held: Any, tmp_path: Path
) -> None:
    async with Client(build_server(settings_for(sandbox_server))) as client:
        open_task = (
            await client.call_tool("generate_video", {"prompt": "a storm", "model": "seedance-2-fast", "duration": 5})
        ).structured_content
        status = await client.call_tool("budget_status", {})
        seen = await render(client, BUDGET_APP, "budget_status", status, tmp_path, "budget", expect="budget")
    data = status.structured_content
    assert data["schema_version"] == 1 and data["reserved"] == open_task["credits_reserved"] > 0
    assert f"{data['remaining']:,} credits left of {data['budget']:,}" in seen["text"]
    assert f"Reserved {data['reserved']}" in seen["text"] and f"Remaining {data['remaining']}" in seen["text"]
    assert open_task["task_id"] in seen["text"]


async def test_where_the_host_ignores_the_declared_origins_the_image_comes_from_the_preview_resource(
    sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    async with Client(build_server(settings_for(sandbox_server))) as client:
        task_id = (await call(client, "generate_image", prompt="a heron", model="flux-schnell"))["task_id"]
        result = await client.call_tool("poll_task", {"task_id": task_id, "wait_seconds": 20})
        seen = await render(
            client, MEDIA_APP, "poll_task", result, tmp_path, "media-preview", expect="image", ignore_csp_domains=True
        )
    assert seen["violations"] and all(v.startswith("img-src") for v in seen["violations"])  # the link, refused
    assert seen["images"][0]["naturalWidth"] > 0 and seen["images"][0]["src"].startswith("data:image/png;base64,")
    assert f"apikey://tasks/{task_id}/outputs/0/preview" in seen["calls"]


async def test_a_failed_task_says_why_and_that_its_credits_were_released(
    sandbox_server: SandboxServer, held: Any, tmp_path: Path
) -> None:
    async with Client(build_server(settings_for(sandbox_server))) as client:
        started = await client.call_tool("generate_music", {"prompt": "noise", "model": "music-1", "duration": 10})
        task_id = started.structured_content["task_id"]

        failed: list[str] = []

        async def on_call(message: dict[str, Any]) -> None:
            """The app's first poll_task lets the task fail upstream."""
            if not failed:
                failed.append(task_id)
                await advance(sandbox_server, task_id, "failed")

        seen = await render(
            client, MEDIA_APP, "generate_music", started, tmp_path, "media-failed", expect="note", on_call=on_call
        )
        budget = await call(client, "budget_status")
    assert "Failed:" in seen["text"] and "reserved credits were released" in seen["text"]
    assert f"Budget: {budget['remaining']:,} credits left" in seen["text"] and budget["spent"] == 0


async def test_where_the_host_refuses_app_tool_calls_the_app_says_the_agent_can_poll(
    sandbox_server: SandboxServer, held: Any, tmp_path: Path
) -> None:
    async with Client(build_server(settings_for(sandbox_server))) as client:
        arguments = {"prompt": "an owl", "model": "flux-schnell"}
        started = await client.call_tool("generate_image", arguments)

        async def refuse(message: dict[str, Any]) -> None:
            raise PermissionError("this host does not let apps call tools")

        seen = await render(
            client,
            MEDIA_APP,
            "generate_image",
            started,
            tmp_path,
            "media-refused",
            expect="note",
            tool_input=arguments,
            on_call=refuse,
        )
    task_id = started.structured_content["task_id"]
    assert f"ask the agent to call poll_task with task_id {task_id}" in seen["text"]
    assert "image · flux-schnell" in seen["text"]  # the kind from the tool the host's context names
    assert (
        "pending" in seen["text"]
        and f"{started.structured_content['credits_reserved']} credits reserved" in seen["text"]
    )
