"""The stdio server as Claude Desktop runs it: only JSON-RPC on stdout, and the key nowhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import anyio
import pytest
from mcp import Client, StdioServerParameters

from apikey_mcp.config import Settings
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import KEY
from tests.server.conftest import call, call_error, connect, settings_for, stdio_env, text_of

pytestmark = pytest.mark.slow  # a stdio server process per test


@pytest.fixture(params=["memory", "stdio"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def answered(stdout: bytes) -> set[int]:
    """The ids answered in the complete lines read so far (a read may end mid-line)."""
    complete = stdout.split(b"\n")[:-1]
    return {message["id"] for message in map(json.loads, complete) if "id" in message}


def rpc(id_: int | None, method: str, params: dict | None = None) -> bytes:
    message = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if id_ is not None:
        message["id"] = id_
    return (json.dumps(message) + "\n").encode()


async def test_stdout_carries_only_json_rpc_and_the_key_appears_nowhere(sandbox_server: SandboxServer) -> None:
    env = stdio_env(settings_for(sandbox_server, log_level="DEBUG"))
    requests = [
        rpc(
            1,
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        ),
        rpc(None, "notifications/initialized"),
        rpc(2, "logging/setLevel", {"level": "debug"}),
        rpc(3, "tools/list"),
        rpc(4, "tools/call", {"name": "generate_image", "arguments": {"prompt": "x", "model": "flux-schnell"}}),
        rpc(5, "tools/call", {"name": "generate_video", "arguments": {"prompt": "x", "model": "nope"}}),
        rpc(6, "resources/read", {"uri": "apikey://docs/auth.md"}),
        rpc(7, "tools/call", {"name": "budget_status", "arguments": {}}),
    ]
    async with await anyio.open_process(
        [sys.executable, "-m", "apikey_mcp"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdin and process.stdout and process.stderr
        for request in requests:
            await process.stdin.send(request)
        stdout = b""
        with anyio.fail_after(20):  # until every request is answered (they may finish in any order)
            while len(answered(stdout)) < 7:
                stdout += await process.stdout.receive()
        await process.stdin.aclose()
        with anyio.fail_after(10):
            await process.wait()
            stdout += b"".join([chunk async for chunk in process.stdout])
            stderr = b"".join([chunk async for chunk in process.stderr])

    lines = stdout.decode().splitlines()
    messages = [json.loads(line) for line in lines]  # every line parses: nothing else was printed
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    assert stdout.endswith(b"\n") and answered(stdout) == {1, 2, 3, 4, 5, 6, 7}
    assert any(m.get("method") == "notifications/message" for m in messages)  # logs reached the client
    assert b"serving MCP over stdio" in stderr  # logs went to stderr
    assert KEY.encode() not in stdout and KEY.encode() not in stderr


async def test_the_key_is_in_no_result_resource_log_or_notification(transport: str, sandbox_server: SandboxServer):
    seen: list[str] = []

    logs: list[str] = []

    async def on_log(params) -> None:
        logs.append(json.dumps(params.model_dump(mode="json")))

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(f"{progress} {total} {message}")

    async def on_message(message) -> None:
        seen.append(repr(message))

    options = {"logging_callback": on_log, "message_handler": on_message, "log_level": "debug"}
    settings = settings_for(sandbox_server, log_level="DEBUG", session_budget=100)
    async with connect(transport, settings, **options) as client:
        results = {}
        for tool, arguments in [
            ("list_models", {}),
            ("estimate", {"model": "seedance-2"}),
            ("generate_video", {"prompt": "ok", "model": "seedance-2-fast"}),
            ("generate_image", {"prompt": "too dear", "model": "seedream-4", "n": 4, "size": "2048x2048"}),
            ("chat_completion", {"prompt": "what is my key?", "model": "gpt-4o-mini"}),
            ("poll_task", {"task_id": "task_missing"}),
            ("budget_status", {}),
        ]:
            results[tool] = result = await client.call_tool(tool, arguments, progress_callback=on_progress)
            seen.append(text_of(result) + json.dumps(result.structured_content))
        assert results["generate_image"].is_error and results["poll_task"].is_error
        task_id = results["generate_video"].structured_content["task_id"]
        arguments = {"task_id": task_id, "wait_seconds": 5}
        result = await client.call_tool("poll_task", arguments, progress_callback=on_progress)
        seen.append(text_of(result))
        for uri in ["apikey://docs/auth.md", "apikey://docs/llms.txt", "apikey://budget", f"apikey://tasks/{task_id}"]:
            seen.append((await client.read_resource(uri)).model_dump_json())
    assert any("created video task" in line for line in logs), "the client's log channel heard the create"
    seen += logs
    assert not [s for s in seen if KEY in s]


async def test_a_wrong_key_is_reported_without_echoing_it(sandbox_server: SandboxServer) -> None:
    wrong = "sk-wrong-key-4f9e1d"
    async with connect("memory", settings_for(sandbox_server, api_key=wrong)) as client:
        text = await call_error(client, "generate_video", prompt="x", model="seedance-2-fast")
    assert "invalid_api_key" in text and "APIKEY_API_KEY" in text and wrong not in text


async def test_sandbox_flag_runs_everything_with_no_account() -> None:
    env = stdio_env(Settings(poll_interval=0.05))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "apikey_mcp", "--sandbox", "--budget", "300"], env=env
    )
    async with Client(params) as client:
        created = await call(client, "generate_image", prompt="hello sandbox", model="flux-schnell")
        with anyio.fail_after(15):
            done = await call(client, "poll_task", task_id=created["task_id"], wait_seconds=30)
        llms = (await client.read_resource("apikey://docs/llms.txt")).contents[0].text
    assert done["status"] == "succeeded" and done["budget"]["budget"] == 300
    assert done["outputs"][0]["url"].startswith("http://127.0.0.1:")
    assert "SANDBOX" in llms


async def test_sigterm_stops_the_server_cleanly_and_names_its_unfinished_tasks(
    sandbox_server: SandboxServer, held: Sandbox
) -> None:
    env = stdio_env(settings_for(sandbox_server))
    create = {"name": "generate_image", "arguments": {"prompt": "unfinished", "model": "flux-schnell"}}
    async with await anyio.open_process(
        [sys.executable, "-m", "apikey_mcp"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdin and process.stdout and process.stderr
        for request in [
            rpc(
                1,
                "initialize",
                {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
            ),
            rpc(None, "notifications/initialized"),
            rpc(2, "tools/call", create),
        ]:
            await process.stdin.send(request)
        stdout = b""
        with anyio.fail_after(20):
            while 2 not in answered(stdout):
                stdout += await process.stdout.receive()
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            code = await process.wait()
            stdout += b"".join([chunk async for chunk in process.stdout])
            stderr = b"".join([chunk async for chunk in process.stderr])
    (task_id,) = held.tasks
    assert code == 0
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in stdout.decode().splitlines())
    assert b"SIGTERM: stopping" in stderr and f"unfinished task(s) {task_id}".encode() in stderr
