"""A task the gateway no longer knows: the log names its reservation and the command that closes it, and once the
operator has closed it, shutdown no longer lists it as unfinished or open."""

from __future__ import annotations

import logging

import pytest

from apikey_mcp.budget import OPERATOR
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.stores import MemoryLedgerStore
from tests.conftest import wait_until
from tests.server.conftest import call, connect, settings_for


@pytest.mark.parametrize("operator_closes", [True, False])
async def test_a_task_the_gateway_forgot_names_its_reservation_and_the_close_command(
    sandbox_server: SandboxServer, held: Sandbox, caplog: pytest.LogCaptureFixture, operator_closes: bool
) -> None:
    caplog.set_level(logging.INFO, logger="apikey_mcp")
    store = MemoryLedgerStore()
    settings = settings_for(sandbox_server, lost_after_seconds=0.01)  # lost at its second 404 (issue 16: not its first)
    async with connect("memory", settings, store=store) as client:
        created = await call(client, "generate_image", prompt="forgotten", model="flux-schnell")
        task_id = created["task_id"]
        del held.tasks[task_id]  # the gateway forgets it: its next poll answers 404
        await wait_until(lambda: "no longer known to the gateway" in caplog.text)
        [reservation] = await store.reservations("local", open_only=True)
        lost = next(r.getMessage() for r in caplog.records if "no longer known" in r.getMessage())
        assert task_id in lost and reservation.id in lost and f"apikey-mcp admin close {reservation.id}" in lost
        if operator_closes:
            assert await store.release(reservation.id, actor=OPERATOR)  # what `apikey-mcp admin close` does
        caplog.clear()
    at_stop = caplog.text
    assert "unfinished" not in at_stop  # the watcher gave it up: it is not running anywhere
    if operator_closes:
        assert task_id not in at_stop and reservation.id not in at_stop
    else:
        assert f"task {task_id} lost by the gateway, its reservation {reservation.id}" in at_stop
        assert f"apikey-mcp admin close {reservation.id}" in at_stop
