"""Three replicas behind nginx round-robin on one PostgreSQL ledger: the budget holds exactly, any replica
serves any request, and a task ends once however the fleet learns of it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from tests.conftest import wait_until
from tests.replicas.conftest import BUDGET, IMAGE_CREDITS, TASKS_EACH, Cluster

pytestmark = pytest.mark.slow  # replicas behind nginx on PostgreSQL

IMAGE = {"prompt": "a lighthouse at dusk", "model": "flux-schnell"}
CALLS = 200
CONCURRENT_PRINCIPALS = ["p1", "p2", "p3", "p4"]


def result_of(result: Any) -> dict[str, Any]:
    return result.structured_content or {}


async def wait_for(condition: Any, seconds: float = 30) -> None:
    """Re-check `condition` until it holds (a deadline, never a bare sleep)."""
    await wait_until(condition, seconds=seconds)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_any_replica_serves_any_request_of_either_protocol_generation(cluster: Cluster, mode: str) -> None:
    # Round-robin sends these 8 requests to all 3 replicas: a 2025-era session would be "not found" on the second.
    async with cluster.connect("erin", mode=mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        statuses = [result_of(await client.call_tool("budget_status", {})) for _ in range(6)]
        asked = await client.call_tool("request_budget_increase", {"credits": 50, "reason": "one more image"})
    assert {"generate_image", "poll_task", "budget_status"} <= tools
    assert all(s["budget"] == BUDGET for s in statuses)
    answer = result_of(asked)
    assert answer["approved"] is False and answer["granted"] == 0
    assert f"apikey-mcp admin set-budget erin {BUDGET + 50}" in answer["message"]


async def test_concurrent_generates_from_four_principals_spend_exactly_their_budgets(cluster: Cluster) -> None:
    created: dict[str, list[str]] = {p: [] for p in CONCURRENT_PRINCIPALS}
    refused: Counter[str] = Counter()

    async def generate(client: Any, principal: str) -> None:
        result = await client.call_tool("generate_image", IMAGE)
        if result.is_error:
            text = result.content[0].text
            assert "budget" in text.lower(), text
            refused[principal] += 1
        else:
            created[principal].append(result_of(result)["task_id"])

    async with anyio.create_task_group() as group:
        for principal in CONCURRENT_PRINCIPALS:
            group.start_soon(_burst, cluster, principal, generate)
    assert {p: len(ids) for p, ids in created.items()} == dict.fromkeys(CONCURRENT_PRINCIPALS, TASKS_EACH)
    assert sum(refused.values()) == CALLS - TASKS_EACH * len(CONCURRENT_PRINCIPALS)
    sandbox = cluster.sandbox
    all_ids = [task_id for ids in created.values() for task_id in ids]
    assert len(set(all_ids)) == len(all_ids) and set(all_ids) <= set(sandbox.tasks)

    def settled() -> bool:
        rows = cluster.sql("SELECT sum(reserved) FROM apikey_principals WHERE name = ANY(%s)", CONCURRENT_PRINCIPALS)
        return rows[0][0] == 0

    await wait_for(settled)  # the sandbox's tasks end on their clock; their callbacks settle them
    ledgers = dict(cluster.sql("SELECT name, spent FROM apikey_principals WHERE name = ANY(%s)", CONCURRENT_PRINCIPALS))
    charged = {p: sum(sandbox.tasks[t].task.credits.charged or 0 for t in ids) for p, ids in created.items()}
    assert ledgers == charged == dict.fromkeys(CONCURRENT_PRINCIPALS, TASKS_EACH * IMAGE_CREDITS)


async def _burst(cluster: Cluster, principal: str, generate: Any) -> None:
    async with cluster.connect(principal) as client, anyio.create_task_group() as group:
        for _ in range(CALLS // len(CONCURRENT_PRINCIPALS)):
            group.start_soon(generate, client, principal)


def test_a_replica_logs_where_it_listens_not_the_balancers_url(cluster: Cluster) -> None:
    replica = cluster.replicas[0]
    started = next(line for line in replica.log.read_text().splitlines() if "serving streamable-http" in line)
    assert f"listening on 127.0.0.1:{replica.port} (public URL {cluster.url})" in started
    assert f"on {cluster.url}" not in started
