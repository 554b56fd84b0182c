"""The hosted server as a process: SIGKILL after a create, restart on the same state file, nothing lost;
and a graceful stop that answers what is in flight and logs every task id."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
from mcp.types import CallToolResult

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import advance
from tests.harness import Processes
from tests.hosted.conftest import ALICE, reach, start_process
from tests.server.conftest import call

pytestmark = pytest.mark.slow  # server processes killed and restarted


async def test_sigkill_after_a_create_loses_no_task_and_resets_no_budget(
    sandbox_server: SandboxServer, held: Sandbox, tmp_path: Path, processes: Processes
) -> None:
    state, log = tmp_path / "state.sqlite3", tmp_path / "server.log"
    first = await start_process(processes, sandbox_server, state, log).wait_ready(seconds=30)
    async with reach(first).connect("streamable-http", ALICE) as client:
        created = await call(client, "generate_video", prompt="survives", model="seedance-2-fast")
    assert processes.stop(first, signal.SIGKILL) == -signal.SIGKILL  # no cleanup ran: only what was on disk survives
    task_id = created["task_id"]
    assert held.tasks[task_id].task.status == "pending", "the task was unfinished at the kill"

    second = await start_process(processes, sandbox_server, state, log).wait_ready(seconds=30)
    async with reach(second).connect("sse", ALICE) as client:
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
    sandbox_server: SandboxServer, held: Sandbox, tmp_path: Path, processes: Processes
) -> None:
    log = tmp_path / "server.log"
    process = await start_process(processes, sandbox_server, tmp_path / "state.sqlite3", log).wait_ready(seconds=30)
    in_flight, signalled = anyio.Event(), anyio.Event()
    outcome: list[CallToolResult] = []

    async def progressed(progress: float, total: float | None, message: str | None) -> None:
        in_flight.set()  # poll_task reports the task's state as soon as it starts waiting

    async with reach(process).connect("streamable-http", ALICE) as client:
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
            await anyio.to_thread.run_sync(processes.stop, process, signal.SIGTERM, 30)
    (answer,) = outcome  # the call in flight was answered, not dropped
    assert not answer.is_error and answer.structured_content is not None
    assert answer.structured_content["status"] == "pending"
    text = log.read_text()
    assert "stopped; the ledger" in text  # the shutdown ran (uvicorn then re-raises SIGTERM)
    assert f"created image task {task_id}" in text
    assert f"unfinished task(s) {task_id}" in text
