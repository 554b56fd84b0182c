"""stdio sessions kept in the local ledger: each run is a session with its own budget, its spending shows in
`admin history` and `admin report` after it exits, unfinished tasks are settled at the next start against the
same gateway (others are listed by `admin reservations --open`), and sandbox runs keep a ledger of their own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from apikey_mcp.budget import Hold, ReservationState
from apikey_mcp.config import Settings
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.stores import open_store
from tests.conftest import advance, wait_until
from tests.server.conftest import call, stdio_env

from .conftest import ledger_totals, stdio_params

pytestmark = pytest.mark.slow  # stdio server and admin processes


async def admin(state: Path, *args: str) -> Any:
    done = await anyio.run_process(
        [sys.executable, "-m", "apikey_mcp", "admin", "--state-file", str(state), *args], check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def chat(client: Client) -> dict[str, Any]:
    return await call(client, "chat_completion", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


async def test_a_sessions_spending_shows_in_admin_history_and_report_after_it_exits(
    sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite3"
    params = stdio_params(sandbox_server, state, "--principal", "erin", "--budget", "100")
    async with Client(params) as client:
        created = await call(client, "generate_image", prompt="a fox", model="flux-schnell")
        with anyio.fail_after(20):
            await call(client, "poll_task", task_id=created["task_id"], wait_seconds=20)
        first = await chat(client)
    async with Client(params) as client:  # a new session: the session budget again, whatever the last one spent
        status = await call(client, "budget_status")
        assert status["remaining"] == 100
        second = await chat(client)
    spent = (await ledger_totals(state))["erin"].spent
    assert spent == created["credits_reserved"] + first["credits_charged"] + second["credits_charged"] > 0
    history = await admin(state, "history", "--json")
    settled = [e for e in history if e["principal"] == "erin" and e["kind"] == "settle"]
    assert len(settled) == 3 and sum(e["credits"] for e in settled) == spent
    assert [e["actor"] for e in history if e["kind"] == "budget"] == ["configuration", "session"]
    report = await admin(state, "report", "--json", "--since", "24h")
    assert report["rows"] == [{"principal": "erin", "spent": spent, "calls": 3, "refusals": 0}]
    models = {r["model"]: r["spent"] for r in (await admin(state, "report", "--json", "--by", "model"))["rows"]}
    assert models == {"flux-schnell": created["credits_reserved"], "gpt-4o-mini": spent - created["credits_reserved"]}


async def test_a_task_left_unfinished_is_settled_at_the_next_start_against_the_same_gateway(
    sandbox_server: SandboxServer, held: Sandbox, tmp_path: Path
) -> None:
    state = tmp_path / "state.sqlite3"
    params = stdio_params(sandbox_server, state, "--principal", "erin")
    async with Client(params) as client:
        created = await call(client, "generate_image", prompt="left running", model="flux-schnell")
    async with open_store(state_file=state) as store:  # and one made at another gateway, left open too
        other = await store.reserve(
            "erin", 5, "image elsewhere", hold=Hold("image", "flux-schnell", "image", "http://elsewhere.example")
        )
        await store.attach(other.id, "task_elsewhere", "image")
    await advance(sandbox_server, created["task_id"])

    async def settled() -> bool:
        async with open_store(state_file=state) as store:
            found = await store.task_reservation("erin", created["task_id"])
        return found is not None and found.state == ReservationState.SETTLED

    async with Client(params):
        await wait_until(settled)
    still_open = await admin(state, "reservations", "--open", "--json")
    assert [(r["id"], r["gateway"]) for r in still_open] == [(other.id, "http://elsewhere.example")]


async def test_sandbox_runs_keep_a_ledger_of_their_own(own_data_folder: Path) -> None:
    env = stdio_env(Settings())
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "apikey_mcp", "--sandbox", "--principal", "fay"], env=env
    )
    async with Client(params) as client:
        await chat(client)
    folder = own_data_folder / "apikey-mcp"
    assert (folder / "sandbox-state.sqlite3").exists() and not (folder / "state.sqlite3").exists()
    assert (await ledger_totals(folder / "sandbox-state.sqlite3"))["fay"].spent > 0


def test_a_hosted_sandbox_keeps_a_ledger_of_its_own_too(tmp_path: Path) -> None:
    from apikey_mcp.hosted.app import create_app

    create_app(Settings(transport="http", sandbox=True, state_file=tmp_path / "state.sqlite3"))
    assert (tmp_path / "sandbox-state.sqlite3").exists() and not (tmp_path / "state.sqlite3").exists()


async def test_request_budget_increase_still_raises_a_sessions_budget(
    sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    from tests.server.conftest import answering

    state = tmp_path / "state.sqlite3"
    params = stdio_params(sandbox_server, state, "--principal", "erin", "--budget", "100")
    async with Client(params) as client:  # an earlier session spent something
        spent = (await chat(client))["credits_charged"]
    elicitation, asked = answering("accept", True)
    async with Client(params, elicitation_callback=elicitation) as client:
        raised = await call(client, "request_budget_increase", credits=50, reason="a longer piece")
    assert raised["approved"] is True and len(asked) == 1
    assert raised["budget"]["remaining"] == 150 and raised["budget"]["spent"] == spent
    history = await admin(state, "history", "--json")
    assert [e["actor"] for e in history if e["kind"] == "budget"] == ["configuration", "session", "human"]
