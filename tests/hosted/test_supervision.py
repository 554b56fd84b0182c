"""Faults stay local: a failing background job ends alone, and the hosted server stays up for everyone.

Regression: a succeeded task whose output link is malformed (`http://h:xx/a.png`, or a host answering 302
to one) raised inside the task group every principal's watchers shared, ending the server's lifespan:
/mcp answered 500 for everyone, another principal's task was never settled, and /healthz still said 200.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest

from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.sandbox.faults import MALFORMED_LINK
from apikey_mcp.supervisor import Supervisor
from tests.conftest import advance, wait_until
from tests.hosted.conftest import ALICE, BOB
from tests.server.conftest import call, poll_until_saved


@pytest.mark.parametrize("kind", ["link", "redirect"])
async def test_a_malformed_result_link_fails_that_save_alone_and_the_server_serves_everyone(
    hosted_factory, sandbox_server: SandboxServer, held: Sandbox, tmp_path: Path, kind: str
) -> None:
    hosted = hosted_factory(output_dir=tmp_path / "out")
    async with hosted.connect("streamable-http", ALICE) as alice, hosted.connect("streamable-http", BOB) as bob:
        held.faults.bad_links.append(kind)  # type: ignore[arg-type]
        broken = await call(alice, "generate_image", prompt="broken link", model="flux-schnell")
        running = await call(bob, "generate_image", prompt="meanwhile", model="flux-schnell")
        await advance(sandbox_server, broken["task_id"])
        saved = await poll_until_saved(alice, broken["task_id"], wait_seconds=5)
        await advance(sandbox_server, running["task_id"])
        with anyio.fail_after(15):
            done = await call(bob, "poll_task", task_id=running["task_id"], wait_seconds=10)
            bob_budget = await call(bob, "budget_status")
    async with httpx2.AsyncClient() as http:
        ready = await http.get(f"{hosted.url}/readyz")
    assert saved["status"] == "succeeded" and "failed" in saved["next_step"]
    if kind == "link":
        assert MALFORMED_LINK in saved["next_step"]  # the agent is told which link could not be used
    assert done["status"] == "succeeded" and bob_budget["reserved"] == 0 and bob_budget["spent"] > 0
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert hosted.accounts.supervisor.alive and not list((tmp_path / "out").glob("*.part"))


async def test_a_failing_job_is_logged_counted_and_cancels_no_other(caplog: pytest.LogCaptureFixture) -> None:
    finished = anyio.Event()

    async def broken() -> None:
        raise ValueError("boom")

    async def steady() -> None:  # still running when its neighbour fails, and it finishes all the same
        await wait_until(lambda: supervisor.failures["watch"] == 1)
        finished.set()

    async with Supervisor().running() as supervisor:
        supervisor.spawn(steady, name="save task_a", task="task_a", principal="bob")
        supervisor.spawn(broken, name="watch task_b", task="task_b", principal="alice")
        with anyio.fail_after(5):
            await finished.wait()
    assert supervisor.failures["watch"] == 1
    (record,) = [r for r in caplog.records if "boom" in r.getMessage()]
    assert "task_b" in record.getMessage() and "alice" in record.getMessage()


async def test_a_service_is_restarted_with_backoff_after_it_fails() -> None:
    runs: list[int] = []
    naps: list[float] = []
    third = anyio.Event()

    async def nap(seconds: float) -> None:
        naps.append(seconds)

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 3:
            third.set()
            await anyio.sleep_forever()
        raise ConnectionError("lost")

    async with Supervisor(sleep=nap).running() as supervisor:
        supervisor.service(flaky, name="listener")
        with anyio.fail_after(5):
            await third.wait()
    assert len(runs) == 3 and supervisor.restarts["listener"] == 2 and naps[1] > naps[0]
