"""The test owns the sandbox's task clock: a held task waits for /sandbox/tasks/{id}/advance."""

from __future__ import annotations

import httpx2
import pytest

from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import ImageRequest, TaskStatus
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import KEY, OTHER_KEY, advance


@pytest.fixture
async def client(sandbox_server: SandboxServer):
    async with GatewayClient(sandbox_server.url, KEY) as client:
        yield client


async def test_a_held_task_stays_pending_until_advanced_then_runs_and_settles(
    client: GatewayClient, sandbox_server: SandboxServer, held: Sandbox
) -> None:
    task = await client.generate_image(ImageRequest(model="flux-schnell", prompt="a kite", n=2))
    assert task.credits is not None and task.credits.reserved
    cost = task.credits.reserved
    polled = [(await client.get_task(task.task_id)).status for _ in range(3)]
    running = await advance(sandbox_server, task.task_id, "running", progress=0.5)
    still = await client.get_task(task.task_id)
    done = await advance(sandbox_server, task.task_id)
    finished = await client.get_task(task.task_id)
    assert polled == [TaskStatus.PENDING] * 3
    assert running["status"] == "running" and still.status == TaskStatus.RUNNING and still.progress == 0.5
    assert done["status"] == "succeeded" and finished.credits is not None and finished.credits.charged == cost
    assert len(finished.outputs) == 2
    assert held.wallets[KEY].balance == 10_000 - cost and held.wallets[KEY].reserved == 0


async def test_advancing_to_failed_refunds_and_a_finished_task_cannot_move_again(
    client: GatewayClient, sandbox_server: SandboxServer, held: Sandbox
) -> None:
    task = await client.generate_image(ImageRequest(model="flux-schnell", prompt="a kite"))
    assert task.credits is not None
    failed = await advance(sandbox_server, task.task_id, "failed")
    async with httpx2.AsyncClient(base_url=sandbox_server.url) as http:
        again = await http.post(f"/sandbox/tasks/{task.task_id}/advance", json={}, headers={"x-api-key": KEY})
        foreign = await http.post(f"/sandbox/tasks/{task.task_id}/advance", json={}, headers={"x-api-key": OTHER_KEY})
        bad = await http.post(f"/sandbox/tasks/{task.task_id}/advance", json={"to": "done"}, headers={"x-api-key": KEY})
    assert failed["status"] == "failed" and failed["credits"]["refunded"] == task.credits.reserved > 0
    assert held.wallets[KEY].balance == 10_000 and held.wallets[KEY].reserved == 0
    assert (again.status_code, again.json()["error"]["code"]) == (409, "task_finished")
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, "task_not_found")
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_request")
