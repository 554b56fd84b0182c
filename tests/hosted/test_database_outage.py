"""A PostgreSQL outage is survived, not fatal: while the database is away paid calls are refused within 2 s in
our own words and readiness is 503; when it is back, the server is ready again, the listener reconnected,
due settlements written and waiting polls answered, within 5 s. A routine restart with a task pending (the
regression: the replica's task group died and the waiting poll_task never returned) changes nothing.
"""

from __future__ import annotations

import time

import anyio
import httpx2
import psycopg
import pytest

from apikey_mcp.replicas.fleet import LISTENER_NAME
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import advance, wait_until
from tests.hosted.conftest import ALICE
from tests.pg_cluster import Cluster
from tests.server.conftest import call, call_error

pytestmark = pytest.mark.slow  # a PostgreSQL cluster of its own, stopped and restarted

DRIVER_WORDS = ("psycopg", "connection refused", "Connection refused", "OperationalError", "server closed")


def _replica(hosted_factory, cluster: Cluster):
    return hosted_factory(
        database_url=cluster.url,
        request_state_key="s" * 64,
        transport="streamable-http",
        public_url=None,
        webhook_secret=None,
        lease_seconds=3,
    )


async def _ready(url: str) -> tuple[int, dict]:
    async with httpx2.AsyncClient(timeout=5) as http:
        answer = await http.get(f"{url}/readyz")
    return answer.status_code, answer.json()


async def test_an_outage_refuses_paid_calls_fast_and_everything_comes_back_within_5_s(
    hosted_factory, sandbox_server: SandboxServer, held: Sandbox, own_postgres: Cluster
) -> None:
    hosted = _replica(hosted_factory, own_postgres)
    async with hosted.connect("streamable-http", ALICE) as alice:
        created = await call(alice, "generate_image", prompt="through an outage", model="flux-schnell")
        await wait_until(lambda: _ready(hosted.url), seconds=10)
        assert (await _ready(hosted.url))[0] == 200
        await anyio.to_thread.run_sync(own_postgres.stop)
        started = time.monotonic()
        refused = await call_error(alice, "generate_image", prompt="not now", model="flux-schnell")
        refused_in = time.monotonic() - started
        read = await call_error(alice, "budget_status")
        status, body = await _ready(hosted.url)
        await advance(sandbox_server, created["task_id"])  # it ends while the ledger is away
        with anyio.fail_after(10):  # answered, saying the ledger is away (the task's state is there all the same)
            during = await call_error(alice, "poll_task", task_id=created["task_id"], wait_seconds=3)
        await anyio.to_thread.run_sync(own_postgres.start)
        back = time.monotonic()

        async def recovered() -> bool:
            code, checks = await _ready(hosted.url)
            return code == 200 and checks["checks"].get("listener") == "ok"

        await wait_until(recovered, seconds=5)

        async def settled() -> bool:
            return (await call(alice, "budget_status"))["reserved"] == 0

        await wait_until(settled, seconds=5)
        recovered_in = time.monotonic() - back
        budget = await call(alice, "budget_status")
        after = await call(alice, "poll_task", task_id=created["task_id"], wait_seconds=0)
    print(f"outage: paid call refused in {refused_in:.2f} s, ready and settled {recovered_in:.2f} s after the return")
    assert refused_in < 2.5 and "ledger" in refused and not any(w in refused for w in DRIVER_WORDS), refused
    assert "unavailable" in read or "cannot be read" in read
    assert status == 503 and body["ready"] is False and body["checks"]["ledger"] != "ok"
    assert "ledger" in during and not any(w in during for w in DRIVER_WORDS)
    assert after["status"] == "succeeded"
    assert recovered_in < 5, f"back after {recovered_in:.1f} s"
    assert budget["spent"] == created["credits_reserved"] and budget["reserved"] == 0


@pytest.mark.parametrize("cut", ["restart", "terminate"])
async def test_a_database_restart_with_a_task_pending_leaves_the_replica_serving(
    hosted_factory, sandbox_server: SandboxServer, held: Sandbox, own_postgres: Cluster, cut: str
) -> None:
    hosted = _replica(hosted_factory, own_postgres)
    async with hosted.connect("streamable-http", ALICE) as alice:
        created = await call(alice, "generate_image", prompt="pending through a restart", model="flux-schnell")
        outcome: dict = {}

        async def waiting() -> None:
            started = time.monotonic()
            outcome.update(await call(alice, "poll_task", task_id=created["task_id"], wait_seconds=15))
            outcome["took"] = time.monotonic() - started

        async with anyio.create_task_group() as group:
            group.start_soon(waiting)
            await wait_until(lambda: held.tasks[created["task_id"]].polls > 0)  # watched, and waited on
            if cut == "restart":
                await anyio.to_thread.run_sync(own_postgres.restart)
            else:
                assert await anyio.to_thread.run_sync(own_postgres.terminate_backends) >= 2  # pool and listener
            await wait_until(lambda: _listening(own_postgres), seconds=10)
            await advance(sandbox_server, created["task_id"])
        budget = await call(alice, "budget_status")
    assert outcome["status"] == "succeeded" and outcome["took"] < 15 + 2
    assert budget["reserved"] == 0 and budget["spent"] == created["credits_reserved"]
    assert (await _ready(hosted.url))[0] == 200


def _listening(cluster: Cluster) -> bool:
    """The replica's listener is connected again (its backend is there)."""
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (LISTENER_NAME,))
        return found.fetchone() is not None
