"""Two server processes on one ledger (one SQLite file, or one PostgreSQL database), each sent concurrent
creates for one principal against one sandbox: together they never spend past the budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import advance, wait_until
from tests.harness import Processes
from tests.hosted.conftest import ALICE, BOB, reach, start_process
from tests.ledger.conftest import database_url, postgres_schema
from tests.server.conftest import call

pytestmark = pytest.mark.slow  # two server processes on one ledger

VIDEO = {"prompt": "x", "model": "seedance-2-fast"}  # 40 credits
BUDGET = 5 * 40 + 39  # room for exactly 5


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path | None, dict[str, str]]]:
    """Where both processes keep the ledger: (state file, extra environment)."""
    if request.param == "sqlite":
        yield tmp_path / "shared.sqlite3", {}
    else:
        database_url()
        with postgres_schema() as url:
            # replica mode (a PostgreSQL ledger) needs the key every replica shares
            yield None, {"APIKEY_DATABASE_URL": url, "APIKEY_REQUEST_STATE_KEY": "r" * 64}


async def test_two_processes_on_one_ledger_never_overspend(
    sandbox_server: SandboxServer,
    sandbox: Sandbox,
    tmp_path: Path,
    processes: Processes,
    ledger,
) -> None:
    state_file, env = ledger
    env = {**env, "APIKEY_SESSION_BUDGET": str(BUDGET)}
    first = await start_process(processes, sandbox_server, state_file, tmp_path / "first.log", **env).wait_ready(
        seconds=30
    )  # the first creates the ledger; the second opens the same one
    second = start_process(processes, sandbox_server, state_file, tmp_path / "second.log", **env)
    await second.wait_ready(seconds=30)
    outcomes: list[bool] = []
    async with (
        reach(first).connect("streamable-http", ALICE) as a,
        reach(second).connect("streamable-http", ALICE) as b,
    ):

        async def create(client) -> None:
            outcomes.append(not (await client.call_tool("generate_video", VIDEO)).is_error)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for _ in range(10):
                    group.start_soon(create, a)
                    group.start_soon(create, b)
        seen_by_first, seen_by_second = await call(a, "budget_status"), await call(b, "budget_status")
    at_gateway = sum(task.reserved for task in sandbox.tasks.values())
    assert outcomes.count(True) == len(sandbox.tasks) == 5
    assert at_gateway == 200 <= BUDGET
    for seen in (seen_by_first, seen_by_second):
        assert seen["budget"] == BUDGET and seen["spent"] + seen["reserved"] == 200


async def test_a_task_created_through_one_process_is_polled_and_settled_through_the_other(
    sandbox_server: SandboxServer, held: Sandbox, tmp_path: Path, processes: Processes, ledger
) -> None:
    state_file, env = ledger
    first = await start_process(processes, sandbox_server, state_file, tmp_path / "first.log", **env).wait_ready(
        seconds=30
    )
    second = start_process(processes, sandbox_server, state_file, tmp_path / "second.log", **env)
    await second.wait_ready(seconds=30)
    async with reach(first).connect("streamable-http", ALICE) as a:
        created = await call(a, "generate_video", **VIDEO)
    await advance(sandbox_server, created["task_id"])
    # Streamable HTTP for both: on a PostgreSQL ledger the processes are replicas, which do not serve SSE
    async with (
        reach(second).connect("streamable-http", ALICE) as b,
        reach(second).connect("streamable-http", BOB) as bob,
    ):
        done = await call(b, "poll_task", task_id=created["task_id"], wait_seconds=10)
        await wait_until(lambda: _settled(b))
        status = await call(b, "budget_status")
        not_bobs = (await bob.call_tool("poll_task", {"task_id": created["task_id"], "wait_seconds": 0})).is_error
    assert done["status"] == "succeeded" and done["credits_reserved"] == 40
    assert (status["spent"], status["reserved"]) == (40, 0)
    assert not_bobs  # the ledger says whose task it is: another principal still cannot see it


async def _settled(client) -> bool:
    return (await call(client, "budget_status"))["reserved"] == 0
