"""The hosted server as a process: SIGKILL after a create, restart on the same state file, nothing lost;
and a graceful stop that answers what is in flight and logs every task id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.types import CallToolResult

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import KEY, advance, free_port, wait_until
from tests.hosted.conftest import ALICE, TOKENS, Hosted
from tests.server.conftest import call

pytestmark = pytest.mark.slow  # server processes killed and restarted


class Process:
    """`apikey-mcp --transport http` in a subprocess of its own."""

    def __init__(
        self, sandbox_server: SandboxServer, state_file: Path | None, log: Path, port: int, **extra_env: str
    ) -> None:
        """`state_file` None: the ledger is wherever `extra_env` says (APIKEY_DATABASE_URL)."""
        self.port, self.log = port, log
        env = {k: os.environ[k] for k in ("PATH", "HOME", "XDG_DATA_HOME") if k in os.environ}
        env |= {"APIKEY_BASE_URL": sandbox_server.url, "APIKEY_API_KEY": KEY, "APIKEY_MCP_AUTH_TOKENS": TOKENS,
                "APIKEY_POLL_INTERVAL": "0.05", "APIKEY_MAX_POLL_INTERVAL": "0.1", **extra_env}  # fmt: skip
        args = ["--transport", "http", "--port", str(port), "--log-level", "INFO"]
        args += ["--state-file", str(state_file)] if state_file is not None else []
        with log.open("ab") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "apikey_mcp", *args], env=env, stderr=err)
        self.hosted = Hosted.__new__(Hosted)
        self.hosted.url = f"http://127.0.0.1:{port}"

    async def ready(self) -> Process:
        async with httpx2.AsyncClient() as http:

            async def healthy() -> bool:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.popen.returncode}:\n{self.log.read_text()}")
                try:
                    return (await http.get(f"{self.hosted.url}/healthz")).status_code == 200
                except httpx2.TransportError:
                    return False

            await wait_until(healthy, seconds=30)
        return self

    def stop(self, sig: int) -> int:
        self.popen.send_signal(sig)
        return self.popen.wait(timeout=30)


async def test_sigkill_after_a_create_loses_no_task_and_resets_no_budget(
    sandbox_server: SandboxServer, held: Sandbox, tmp_path: Path, processes: list[Process]
) -> None:
    state, log, port = tmp_path / "state.sqlite3", tmp_path / "server.log", free_port()
    first = Process(sandbox_server, state, log, port)
    processes.append(first)
    await first.ready()
    async with first.hosted.connect("streamable-http", ALICE) as client:
        created = await call(client, "generate_video", prompt="survives", model="seedance-2-fast")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # no cleanup ran: only what was on disk survives
    task_id = created["task_id"]
    assert held.tasks[task_id].task.status == "pending", "the task was unfinished at the kill"

    second = Process(sandbox_server, state, log, free_port())
    processes.append(second)
    await second.ready()
    async with second.hosted.connect("sse", ALICE) as client:
        restored = await call(client, "budget_status")
        await advance(sandbox_server, task_id)  # the task ends only now, after the restart
        with anyio.fail_after(30):
            done = await call(client, "poll_task", task_id=task_id, wait_seconds=20)
        settled = await call(client, "budget_status")
    assert restored["reserved"] == 40 and restored["spent"] == 0
    assert [r["task_id"] for r in restored["open_reservations"]] == [task_id]
    assert done["status"] == "succeeded" and done["credits_reserved"] == 40
    assert (settled["spent"], settled["reserved"], settled["remaining"]) == (40, 0, 960)
    assert f"resumed task {task_id}" in log.read_text()


async def test_sigterm_answers_calls_in_flight_and_logs_unfinished_task_ids(
    sandbox_server: SandboxServer, held: Sandbox, tmp_path: Path, processes: list[Process]
) -> None:
    log = tmp_path / "server.log"
    process = Process(sandbox_server, tmp_path / "state.sqlite3", log, free_port())
    processes.append(process)
    await process.ready()
    in_flight, signalled = anyio.Event(), anyio.Event()
    outcome: list[CallToolResult] = []

    async def progressed(progress: float, total: float | None, message: str | None) -> None:
        in_flight.set()  # poll_task reports the task's state as soon as it starts waiting

    async with process.hosted.connect("streamable-http", ALICE) as client:
        task_id = (await call(client, "generate_image", prompt="long", model="flux-schnell"))["task_id"]

        async def waiting() -> None:
            arguments = {"task_id": task_id, "wait_seconds": 10}  # ends within the 30 s stop grace
            outcome.append(await client.call_tool("poll_task", arguments, progress_callback=progressed))
            assert signalled.is_set(), "the call was still in flight when the server was told to stop"

        async with anyio.create_task_group() as group:
            group.start_soon(waiting)
            with anyio.fail_after(20):
                await in_flight.wait()
            signalled.set()
            await anyio.to_thread.run_sync(process.stop, signal.SIGTERM)
    (answer,) = outcome  # the call in flight was answered, not dropped
    assert not answer.is_error and answer.structured_content is not None
    assert answer.structured_content["status"] == "pending"
    text = log.read_text()
    assert "stopped; the ledger" in text  # the shutdown ran (uvicorn then re-raises SIGTERM)
    assert f"created image task {task_id}" in text
    assert f"unfinished task(s) {task_id}" in text
