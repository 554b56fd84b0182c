"""The sandbox tells a benchmark exactly when a task ended, without counting that as a poll."""

from __future__ import annotations

import time

import httpx2

from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import ImageRequest
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import KEY, OTHER_KEY, advance


async def test_a_tasks_end_is_told_to_the_microsecond_and_is_not_a_poll(
    sandbox_server: SandboxServer, held: Sandbox
) -> None:
    async with GatewayClient(sandbox_server.url, KEY) as client:
        task = await client.generate_image(ImageRequest(model="flux-schnell", prompt="a clock"))
    async with httpx2.AsyncClient(base_url=sandbox_server.url, headers={"x-api-key": KEY}) as http:
        running = (await http.get(f"/sandbox/tasks/{task.task_id}")).json()
        before = time.time()
        await advance(sandbox_server, task.task_id)
        after = time.time()
        ended = (await http.get(f"/sandbox/tasks/{task.task_id}")).json()
        foreign = await http.get(f"/sandbox/tasks/{task.task_id}", headers={"x-api-key": OTHER_KEY})
    assert running == {"status": "pending", "ended_at": None}
    assert ended["status"] == "succeeded" and before <= ended["ended_at"] <= after
    assert foreign.status_code == 404 and "GET /v1/tasks/{task_id}" not in held.requests
