"""Budget alerts in a fleet: two replicas on one PostgreSQL ledger spend one principal's budget at once, and
a real receiver gets each threshold's alert exactly once, signed; a charge a callback settles on another replica
raises its alert too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from apikey_mcp.gateway import webhooks
from apikey_mcp.gateway.models import Task, TaskCredits
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import KEY, free_port, wait_until
from tests.harness import clean_env, stop
from tests.ledger.conftest import postgres_schema
from tests.policy.receiver import SECRET, Receiver, receiving
from tests.replicas.conftest import STATE_KEY, Replica, start_replica

pytestmark = pytest.mark.slow
TOKEN = "fleet-alerts-token-5f1c0e9a7b2d"
IMAGE = {"prompt": "a lighthouse at dusk", "model": "flux-schnell"}  # 2 credits
BUDGET = 20  # ten images; the alerts are at 50% (10 credits) and 100%


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[Replica], Receiver, str]]:
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_schema())
        sandbox_server = stack.enter_context(SandboxServer(Sandbox([KEY], credits=1_000_000, task_seconds=0.05)))
        receiver = stack.enter_context(receiving())
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")},
            "APIKEY_BASE_URL": sandbox_server.url,
            "APIKEY_API_KEY": KEY,
            "APIKEY_DATABASE_URL": database_url,
            "APIKEY_REQUEST_STATE_KEY": STATE_KEY,
            "APIKEY_MCP_AUTH_TOKENS": f"alice={TOKEN}",
            "APIKEY_SESSION_BUDGET": str(BUDGET),
            "APIKEY_POLL_INTERVAL": "0.1",
            "APIKEY_MAX_POLL_INTERVAL": "0.2",
            "APIKEY_ALERT_AT": "50",
            "APIKEY_ALERT_WEBHOOK": receiver.url,
            "APIKEY_ALERT_SECRET": SECRET,
        }
        replicas: list[Replica] = []
        stack.callback(lambda: [stop(r.process) for r in replicas])
        replicas += [start_replica(env, tmp_path) for _ in range(2)]
        yield replicas, receiver, database_url


@asynccontextmanager
async def connect(replica: Replica, token: str = TOKEN) -> Any:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(f"{replica.url}/mcp", http_client=http)) as client:
            yield client


def sql(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchall()


async def test_two_replicas_spending_one_budget_send_each_alert_exactly_once(
    fleet: tuple[list[Replica], Receiver, str],
) -> None:
    replicas, receiver, database_url = fleet
    created: list[str] = []

    async def spend(replica: Replica) -> None:
        async with connect(replica) as client:
            for _ in range(5):
                result = await client.call_tool("generate_image", IMAGE)
                assert not result.is_error, result.content
                created.append(result.structured_content["task_id"])

    async with anyio.create_task_group() as group:
        for replica in replicas:
            group.start_soon(spend, replica)
    await wait_until(lambda: len(receiver.posts) == 2, seconds=30)
    await wait_until(
        lambda: sql(database_url, "SELECT count(*) FROM apikey_reservations WHERE state = 'reserved'") == [(0,)],
        seconds=60,
    )
    # Every settlement made each replica check again: still two, one per threshold.
    await wait_until(
        lambda: sql(database_url, "SELECT count(*) FROM apikey_events WHERE kind = 'settle'") == [(10,)], seconds=30
    )
    assert len(created) == 10 and len(receiver.posts) == 2 and receiver.all_signed()
    assert sorted(a["threshold"] for a in receiver.alerts()) == [50, 100]
    assert all(a["principal"] == "alice" and a["budget"] == BUDGET for a in receiver.alerts())
    assert sql(database_url, "SELECT threshold FROM apikey_alerts ORDER BY threshold") == [(50,), (100,)]


BOB_TOKEN = "fleet-alerts-bob-token-3c8e2a6f9d1b"


@pytest.fixture
def callback_fleet(tmp_path: Path) -> Iterator[tuple[list[Replica], Sandbox, Receiver]]:
    """Two replicas on one ledger that the gateway calls back (at the first's address), polling slowly; the sandbox
    holds its tasks, so only a callback ends them. Budgets of 10 credits, alerts at 50% and 100%."""
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_schema())
        sandbox = Sandbox([KEY], credits=1_000_000, task_seconds=0.05)
        sandbox.hold = True
        sandbox_server = stack.enter_context(SandboxServer(sandbox))
        receiver = stack.enter_context(receiving())
        port = free_port()
        env = clean_env(
            {
                "APIKEY_BASE_URL": sandbox_server.url,
                "APIKEY_API_KEY": KEY,
                "APIKEY_DATABASE_URL": database_url,
                "APIKEY_REQUEST_STATE_KEY": STATE_KEY,
                "APIKEY_MCP_AUTH_TOKENS": f"alice={TOKEN},bob={BOB_TOKEN}",
                "APIKEY_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "APIKEY_WEBHOOK_SECRET": sandbox.webhook_secret,
                "APIKEY_SESSION_BUDGET": "10",
                "APIKEY_POLL_INTERVAL": "30",
                "APIKEY_MAX_POLL_INTERVAL": "30",
                "APIKEY_ALERT_AT": "50",
                "APIKEY_ALERT_WEBHOOK": receiver.url,
                "APIKEY_ALERT_SECRET": SECRET,
            }
        )
        replicas: list[Replica] = []
        stack.callback(lambda: [stop(r.process) for r in replicas])
        replicas += [start_replica(env, tmp_path, port=port), start_replica(env, tmp_path)]
        yield replicas, sandbox, receiver


async def test_a_callback_charge_that_crosses_a_threshold_alerts_with_no_reservation_after_it(
    callback_fleet: tuple[list[Replica], Sandbox, Receiver],
) -> None:
    """Regression: in replica mode only a reservation told the alert checker, so a charge a callback settled (here
    over its hold, on the replica that did not make the task) crossed a threshold and no alert was sent."""
    (first, second), sandbox, receiver = callback_fleet
    async with connect(first) as client:
        made = await client.call_tool("generate_image", IMAGE)  # a hold of 2 credits: 20%, no alert
    assert not made.is_error, made.content
    task_id = made.structured_content["task_id"]
    callback_url = sandbox.tasks[task_id].callback_url
    assert callback_url is not None and callback_url.startswith(first.url)
    done = Task(task_id=task_id, status="succeeded", credits=TaskCredits(reserved=0, charged=6))  # 60%
    body = done.model_dump_json(exclude_none=True).encode()
    headers = webhooks.signed_headers(sandbox.webhook_secret, webhooks.EVENT_COMPLETED, task_id, body)
    async with httpx2.AsyncClient(timeout=60) as http:  # the gateway calls back the other replica
        answer = await http.post(callback_url.replace(first.url, second.url), content=body, headers=headers)
    assert answer.status_code == 204, answer.text
    # Bob crosses his 50% on the same replica after the callback: his alert is checked and posted after hers.
    async with connect(second, BOB_TOKEN) as client:
        made = await client.call_tool("generate_image", {**IMAGE, "n": 3})  # 6 credits: 60%
    assert not made.is_error, made.content
    await wait_until(lambda: "bob" in [a["principal"] for a in receiver.alerts()], seconds=30)
    alerts = [(a["principal"], a["threshold"], a["spent"], a["reserved"]) for a in receiver.alerts()]
    assert ("alice", 50, 6, 0) in alerts, f"the callback's charge crossed alice's 50% and no alert was sent: {alerts}"
    assert alerts == [("alice", 50, 6, 0), ("bob", 50, 0, 6)] and receiver.all_signed()
