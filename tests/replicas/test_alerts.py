"""Budget alerts in a fleet: two replicas on one PostgreSQL ledger spend one principal's budget at once, and
a real receiver gets each threshold's alert exactly once, signed."""

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

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import KEY, wait_until
from tests.harness import stop
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
async def connect(replica: Replica) -> Any:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
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
