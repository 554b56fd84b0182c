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
    assert answers[0]["message"].endswith("Ask them to run: apikey-mcp admin set-budget alice 1000100.")
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
    assert [(e["kind"], e["actor"]) for e in history][:3] == [
        ("budget", "configuration"),
        ("refuse", "principal:alice"),
        ("budget", "operator"),
    ]
    assert history[1]["model"] == "seedance-2" and "over budget" in history[1]["detail"]  # the refusal, recorded


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
            [sys.executable, "-m", "apikey_mcp", "admin", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=clean_env(APIKEY_DATABASE_URL=url),
        )
        raised = await anyio.to_thread.run_sync(lambda: run("set-budget", "alice", "250"))
        closed = await anyio.to_thread.run_sync(lambda: run("close", held.id, "--released", "--json"))
        listed = await anyio.to_thread.run_sync(lambda: run("principals", "--json"))
    assert raised.returncode == closed.returncode == listed.returncode == 0, raised.stderr + closed.stderr
    assert json.loads(closed.stdout)[0]["state"] == "released"
    assert json.loads(listed.stdout) == [
        {
            "principal": "alice",
            "budget": 250,
            "spent": 0,
            "reserved": 0,
            "remaining": 250,
            "max_per_call": None,
            "allow": None,
            "period": "none",
            "alert_at": None,
        }
    ]


@pytest.mark.slow
async def test_admin_lists_lost_tasks_and_closes_them(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    async with open_store(state_file=state) as store:
        await store.ensure_principal("alice", 100)
        lost, running = await store.reserve("alice", 10, "image"), await store.reserve("alice", 5, "image")
        await store.attach(lost.id, "task_gone")
        await store.mark_lost(lost.id)
    listed = admin(state, "reservations", "--lost", "--json")
    table = admin(state, "reservations", "--lost")
    closed = admin(state, "close", lost.id, "--released")
    after = admin(state, "reservations", "--lost", "--json")
    (row,) = json.loads(listed.stdout)
    assert row["id"] == lost.id and row["task_id"] == "task_gone" and row["lost"] is not None
    assert "lost" in table.stdout.splitlines()[0] and running.id not in table.stdout
    assert closed.returncode == 0 and json.loads(after.stdout) == []


def run_admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apikey_mcp", "admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )


@pytest.mark.slow
async def test_admin_takes_the_ledger_options_after_the_subcommand_too(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    async with open_store(state_file=state) as store:
        await store.ensure_principal("alice", 100)
    listed = run_admin("principals", "--state-file", str(state), "--json")
    raised = run_admin("set-budget", "alice", "300", "--state-file", str(state))
    assert listed.returncode == 0, listed.stderr
    assert [p["principal"] for p in json.loads(listed.stdout)] == ["alice"]
    assert raised.returncode == 0, raised.stderr
    async with open_store(state_file=state) as store:
        assert (await store.totals("alice")).budget == 300
    both = run_admin("--state-file", str(state), "principals", "--database-url", "postgresql://nowhere/x")
    assert both.returncode == 2 and "not both" in both.stderr


@pytest.mark.slow
def test_admin_alone_lists_its_commands_instead_of_a_missing_argument() -> None:
    done = run_admin()
    assert done.returncode == 2 and "required" not in done.stderr
    assert done.stderr.startswith("usage: apikey-mcp admin")
    for command in ("principals", "set-budget", "reservations", "close", "history", "--state-file"):
        assert command in done.stderr


@pytest.mark.slow
async def test_a_budget_set_below_what_was_spent_is_done_with_a_warning(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    async with open_store(state_file=state) as store:
        await store.ensure_principal("bob", 100)
        held = await store.reserve("bob", 12, "video")
        await store.settle(held.id, 12)
    done = run_admin("set-budget", "bob", "5", "--state-file", str(state))
    assert done.returncode == 0, done.stderr
    assert "warning: bob has already used 12 credits" in done.stderr and "remaining is -7" in done.stderr
    assert "-7" in done.stdout  # the table, as ever
