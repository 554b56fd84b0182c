"""The sandbox's named fault controls: forgotten tasks, a 401 window, malformed result links."""

from __future__ import annotations

import httpx2
import pytest

from apikey_mcp.sandbox import SandboxServer
from apikey_mcp.sandbox.faults import MALFORMED_LINK, MALFORMED_REDIRECT
from tests.conftest import KEY, advance

IMAGE = {"model": "flux-schnell", "prompt": "a lighthouse"}


def _http(server: SandboxServer) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"})


async def test_forgotten_tasks_are_not_found_and_their_holds_are_refunded(sandbox_server: SandboxServer) -> None:
    sandbox_server.sandbox.hold = True
    async with _http(sandbox_server) as http:
        task_id = (await http.post("/v1/images/generations", json=IMAGE)).json()["task_id"]
        assert sandbox_server.sandbox.wallets[KEY].reserved > 0
        assert sandbox_server.sandbox.forget_tasks() == [task_id]
        answer = await http.get(f"/v1/tasks/{task_id}")
    assert answer.status_code == 404
    assert sandbox_server.sandbox.wallets[KEY].reserved == 0


async def test_unauthorized_window_answers_401_then_ends(sandbox_server: SandboxServer) -> None:
    faults = sandbox_server.sandbox.faults
    async with _http(sandbox_server) as http:
        faults.unauthorized_for(60)
        assert (await http.get("/v1/models")).status_code == 401
        faults.unauthorized_until = 0.0  # the test ends the window instead of waiting for it
        assert (await http.get("/v1/models")).status_code == 200


@pytest.mark.parametrize("kind", ["link", "redirect"])
async def test_a_task_can_succeed_with_a_malformed_link(sandbox_server: SandboxServer, kind: str) -> None:
    sandbox_server.sandbox.hold = True
    sandbox_server.sandbox.faults.bad_links.append(kind)  # type: ignore[arg-type]
    async with _http(sandbox_server) as http:
        task_id = (await http.post("/v1/images/generations", json=IMAGE)).json()["task_id"]
        task = await advance(sandbox_server, task_id)
        url = task["outputs"][0]["url"]
        if kind == "link":
            assert url == MALFORMED_LINK
        else:
            answer = await http.get(url)
            assert answer.status_code == 302
            assert answer.headers["location"] == MALFORMED_REDIRECT
