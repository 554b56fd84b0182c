"""The operator's authority over a hosted server's budgets: the principal's own client cannot raise them,
`apikey-mcp admin` can, and a running server answers with the change at its next call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.types import ElicitResult

from apikey_mcp.budget import Totals
from apikey_mcp.sandbox import Sandbox
from apikey_mcp.stores import open_store
from tests.harness import clean_env
from tests.hosted.conftest import ALICE
from tests.ledger.conftest import database_url, postgres_schema
from tests.server.conftest import call, call_error

VIDEO = {"prompt": "x", "model": "seedance-2-fast"}  # 40 credits


def admin(state_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "apikey_mcp", "admin", "--state-file", str(state_file), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def test_a_client_that_approves_every_elicitation_cannot_pass_the_operators_limit(
    hosted_factory, sandbox: Sandbox
) -> None:
    asked: list[str] = []

    async def approve_everything(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    hosted = hosted_factory(session_budget=100)
    async with hosted.connect("streamable-http", ALICE, elicitation_callback=approve_everything) as client:
        answers = [await call(client, "request_budget_increase", credits=1_000_000, reason="more") for _ in range(3)]
        spent = [await client.call_tool("generate_video", VIDEO) for _ in range(4)]
        status = await call(client, "budget_status")
    assert asked == []  # the token holder's own client is never asked: it is not the human who sets limits
    assert all(a["approved"] is False and a["budget"]["budget"] == 100 for a in answers)
    assert "apikey-mcp admin set-budget alice 1000100" in answers[0]["message"]
    assert [r.is_error for r in spent] == [False, False, True, True]
    assert status["budget"] == 100 and status["spent"] + status["reserved"] == 80 and len(sandbox.tasks) == 2


@pytest.mark.slow
async def test_admin_set_budget_changes_a_running_servers_answer(hosted_factory, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    hosted = hosted_factory(session_budget=100, state_file=state)
    async with hosted.connect("streamable-http", ALICE) as client:
        before = await call(client, "budget_status")
        refused = await call_error(client, "generate_video", prompt="x", model="seedance-2", duration=10)
        changed = await anyio.to_thread.run_sync(lambda: admin(state, "set-budget", "alice", "5000", "--json"))
        after = await call(client, "budget_status")
        created = await call(client, "generate_video", prompt="x", model="seedance-2", duration=10)
    assert before["budget"] == 100 and "Over budget" in refused
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)[0]["budget"] == 5000
    assert after["budget"] == 5000 and created["credits_reserved"] > 100
    listing = admin(state, "principals", "--json")
    assert [p["principal"] for p in json.loads(listing.stdout)] == ["alice"]
    history = json.loads(admin(state, "history", "--json").stdout)
    assert [(e["kind"], e["actor"]) for e in history][:2] == [("budget", "configuration"), ("budget", "operator")]


@pytest.mark.slow
async def test_a_hold_left_by_a_killed_create_is_closed_by_the_operator(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    async with open_store(state_file=state) as store:
        await store.ensure_principal("alice", 100)
        orphan = await store.reserve("alice", 40, "video with seedance-2-fast")  # killed before any task id
    listed = admin(state, "reservations", "--open", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [orphan.id]
    closed = admin(state, "close", orphan.id, "--charged", "40")
    again = admin(state, "close", orphan.id, "--released")
    assert closed.returncode == 0, closed.stderr
    assert again.returncode == 1 and "it is settled" in again.stderr
    async with open_store(state_file=state) as store:
        assert await store.totals("alice") == Totals(100, 40, 0)
        assert (await store.history("alice"))[-1].actor == "operator"


@pytest.mark.slow
async def test_admin_works_on_a_postgresql_ledger_too() -> None:
    database_url()
    with postgres_schema() as url:
        async with open_store(database_url=url) as store:
            await store.ensure_principal("alice", 100)
            held = await store.reserve("alice", 30, "video")
        run = lambda *args: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "apikey_mcp", "admin", *args], capture_output=True, text=True, timeout=60,
            check=False, env=clean_env(APIKEY_DATABASE_URL=url),
        )  # fmt: skip
        raised = await anyio.to_thread.run_sync(lambda: run("set-budget", "alice", "250"))
        closed = await anyio.to_thread.run_sync(lambda: run("close", held.id, "--released", "--json"))
        listed = await anyio.to_thread.run_sync(lambda: run("principals", "--json"))
    assert raised.returncode == closed.returncode == listed.returncode == 0, raised.stderr + closed.stderr
    assert json.loads(closed.stdout)[0]["state"] == "released"
    assert json.loads(listed.stdout) == [{"principal": "alice", "budget": 250, "spent": 0, "reserved": 0,
                                          "remaining": 250}]  # fmt: skip
