"""When a paid request fails, the ledger never counts less than the gateway may have spent."""

from __future__ import annotations

import logging
import math

import anyio
import httpx2
import pytest

from apikey_mcp.budget import Totals
from apikey_mcp.config import Settings
from apikey_mcp.gateway import GatewayClient, ServerError
from apikey_mcp.gateway.models import VideoRequest
from apikey_mcp.paid import UnconfirmedError
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.service import Service
from apikey_mcp.tasks import TaskRegistry
from tests.conftest import KEY
from tests.server.conftest import FAST_POLLING, call, connect, local_ledger, running_service, settings_for, totals

VIDEO = VideoRequest(model="seedance-2-fast", prompt="x")  # 40 credits


def spent_at_gateway(sandbox: Sandbox) -> int:
    wallet = sandbox.wallets[KEY]
    return 10_000 - wallet.balance


@pytest.mark.parametrize("status", [502, 504])
async def test_a_create_whose_answer_is_lost_keeps_its_reservation(
    sandbox_server: SandboxServer, sandbox: Sandbox, status: int
) -> None:
    sandbox.faults.lost_creates.append(status)  # the task is created and reserved at the gateway; we see a 5xx
    async with running_service(sandbox_server) as service:
        with pytest.raises(UnconfirmedError, match="stay reserved") as caught:
            await service.generate(VIDEO)
        assert isinstance(caught.value.__cause__, ServerError)
        assert len(sandbox.tasks) == 1
        counted = await totals(service)
        assert (counted.reserved, counted.spent) == (40, 0)
        at_gateway = spent_at_gateway(sandbox) + sandbox.wallets[KEY].reserved
        assert at_gateway <= counted.spent + counted.reserved


async def test_the_gateways_own_refusal_releases_the_reservation(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    sandbox.faults.refused_creates.append(500)  # with the gateway's envelope: it says it did nothing
    async with running_service(sandbox_server) as service:
        with pytest.raises(ServerError):
            await service.generate(VIDEO)
        assert await totals(service) == Totals(1000, 0, 0) and sandbox.tasks == {}


async def test_an_unreadable_answer_that_names_its_task_is_still_tracked() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/credits/estimate":
            return httpx2.Response(200, json={"model": "m", "modality": "video", "credits": 40})
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"data": [{"id": "seedance-2-fast", "modality": "video"}]})
        if request.method == "POST":
            return httpx2.Response(200, json={"task_id": "task_odd", "status": {"weird": True}})
        return httpx2.Response(200, json={"task_id": "task_odd", "status": "running"})

    async with GatewayClient("https://gw.test", KEY, transport=httpx2.MockTransport(handler)) as client:
        ledger = await local_ledger(1000)
        registry = TaskRegistry(client, ledger, **FAST_POLLING)
        async with registry.running():
            service = Service(Settings(base_url="https://gw.test"), client, ledger, registry)
            result = await service.generate(VIDEO)
            assert result.task_id == "task_odd" and result.credits_reserved == 40
            assert registry.get("task_odd").reservation.task_id == "task_odd"
            assert (await ledger.totals()).reserved == 40


async def test_a_failing_observer_cannot_lose_a_created_task(
    sandbox_server: SandboxServer, sandbox: Sandbox, caplog
) -> None:
    caplog.set_level(logging.ERROR)
    async with running_service(sandbox_server) as service:

        def broken(*args: object) -> None:
            raise RuntimeError("disk full")

        service.registry.observers.append(broken)
        result = await service.generate(VIDEO)
        with anyio.fail_after(20):
            tracked = await service.registry.wait(result.task_id, math.inf)
        assert tracked.task.is_terminal and result.task_id in sandbox.tasks
        assert await totals(service) == Totals(1000, 40, 0)
    assert "observer failed" in caplog.text


async def test_a_results_folder_that_cannot_be_written_still_returns_the_links(
    sandbox_server: SandboxServer, tmp_path
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the folder should be")
    async with connect("memory", settings_for(sandbox_server, output_dir=blocked / "out")) as client:
        created = await call(client, "generate_image", prompt="x", model="flux-schnell")
        done = await call(client, "poll_task", task_id=created["task_id"], wait_seconds=30)
    assert done["status"] == "succeeded" and done["outputs"][0]["url"].startswith("http")
    assert "Saved 0 of 1 files to the output directory" in done["next_step"]
    assert "cannot create the output directory" in done["next_step"]
