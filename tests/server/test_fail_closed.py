"""Money fails closed: no reservation recorded, nothing sent; once a request may have reached the gateway,
its credits stay counted (whatever broke after), and the agent is told which task it was, if any."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from apikey_mcp.accounts import Accounts
from apikey_mcp.budget import LedgerUnavailableError, Totals
from apikey_mcp.config import Settings
from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import VideoRequest
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.server import build_server
from apikey_mcp.stores import MemoryLedgerStore, StoreRefusedError
from apikey_mcp.stores.sqlite import SqliteLedgerStore
from tests.conftest import KEY, wait_until
from tests.server.conftest import FAST_POLLING, call, call_error, connect, running_service, settings_for, totals

VIDEO = {"prompt": "x", "model": "seedance-2-fast"}  # 40 credits
CATALOGUE = {"data": [{"id": "seedance-2-fast", "modality": "video"}, {"id": "gpt-mini", "modality": "chat"}]}


@asynccontextmanager
async def faulty_gateway(create: Callable[[httpx2.Request], httpx2.Response]) -> AsyncIterator[tuple[Client, Any]]:
    """The real server and MCP client, over a gateway whose creates answer with `create`."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json=CATALOGUE)
        if request.url.path == "/v1/credits/estimate":
            return httpx2.Response(200, json={"model": "m", "modality": "video", "credits": 40})
        if request.method == "POST":
            return create(request)
        return httpx2.Response(200, json={"task_id": request.url.path.rsplit("/", 1)[-1], "status": "running"})

    settings = Settings(base_url="https://gw.test", api_key=KEY, session_budget=1000, **FAST_POLLING)
    store = MemoryLedgerStore()
    async with GatewayClient(settings.base_url, KEY, transport=httpx2.MockTransport(handler)) as client:
        accounts = Accounts(settings, client, store)
        async with accounts.running(), Client(build_server(settings, accounts=accounts)) as mcp:
            yield mcp, store


def corrupt_gzip(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, headers={"content-encoding": "gzip"}, content=b"\x1f\x8b not really gzip")


def redirect_loop(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(302, headers={"location": request.url.path})


def huge_number(request: httpx2.Request) -> httpx2.Response:
    body = b'{"task_id": "task_huge", "status": "pending", "credits": {"reserved": 1e400}}'
    return httpx2.Response(200, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("create", [corrupt_gzip, redirect_loop], ids=["corrupt-gzip", "redirect-loop"])
async def test_a_create_answered_unreadably_keeps_its_credits_counted(create) -> None:
    async with faulty_gateway(create) as (mcp, store):
        text = await call_error(mcp, "generate_video", **VIDEO)
        status = await call(mcp, "budget_status")
    assert "did not confirm" in text and "40 credits stay reserved" in text
    assert (status["reserved"], status["spent"]) == (40, 0)
    assert [e.kind for e in await store.history("local")] == ["budget", "reserve"]  # never a release


async def test_a_1e400_in_a_create_answer_is_a_validation_error_and_the_task_is_still_tracked() -> None:
    async with faulty_gateway(huge_number) as (mcp, _):
        created = await call(mcp, "generate_video", **VIDEO)
        status = await call(mcp, "budget_status")
    assert created["task_id"] == "task_huge" and created["credits_reserved"] == 40
    assert status["reserved"] == 40 and status["open_reservations"][0]["task_id"] == "task_huge"


async def test_a_1e400_charge_in_a_chat_answer_is_a_clear_error_and_stays_counted() -> None:
    def chat(request: httpx2.Request) -> httpx2.Response:
        body = b'{"id": "c1", "model": "gpt-mini", "choices": [], "credits": 1e400}'
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    async with faulty_gateway(chat) as (mcp, _):
        text = await call_error(mcp, "chat_completion", model="gpt-mini", prompt="hi", max_tokens=10)
        status = await call(mcp, "budget_status")
    assert "stated a charge of inf credits" in text and "stay reserved" in text
    assert status["reserved"] == 40


async def test_a_ledger_that_cannot_write_refuses_the_call_and_nothing_is_created(
    sandbox_server: SandboxServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite3"
    store = await anyio.to_thread.run_sync(lambda: SqliteLedgerStore(path, busy_seconds=0.2))
    async with connect("memory", settings_for(sandbox_server), store=store) as client:
        await call(client, "budget_status")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the file: no reservation can be recorded
        try:
            text = await call_error(client, "generate_video", **VIDEO)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert "was not sent" in text and "could not record its reservation" in text
        assert sandbox.tasks == {}
        created = await call(client, "generate_video", **VIDEO)  # once it can write again, calls go through
    assert list(sandbox.tasks) == [created["task_id"]]
    await store.aclose()


class FlakyStore(MemoryLedgerStore):
    """A memory store whose settlements fail the first `failures` times, as a locked database would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def settle(self, reservation_id: str, charged: int, *, actor: str | None = None) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise LedgerUnavailableError("database is locked")
        return await super().settle(reservation_id, charged, actor=actor)


async def test_a_settlement_that_fails_to_write_is_retried_until_it_lands(sandbox_server: SandboxServer) -> None:
    store = FlakyStore(failures=3)
    async with running_service(sandbox_server, store=store) as service:
        result = await service.generate(VideoRequest(model="seedance-2-fast", prompt="x"))
        await service.registry.wait(result.task_id, 5)
        await wait_until(lambda: _settled(service))
    assert store.failures == 0 and await store.totals("local") == Totals(1000, 40, 0)


async def test_a_task_id_returned_twice_leaks_no_reservation_and_is_watched_once() -> None:
    polls: list[str] = []
    finished = anyio.Event()

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json=CATALOGUE)
        if request.url.path == "/v1/credits/estimate":
            return httpx2.Response(200, json={"model": "m", "modality": "video", "credits": 40})
        if request.method == "POST":
            return httpx2.Response(200, json={"task_id": "task_same", "status": "pending"})
        polls.append(request.url.path)
        if finished.is_set():
            return httpx2.Response(200, json={"task_id": "task_same", "status": "succeeded", "credits": 40})
        return httpx2.Response(200, json={"task_id": "task_same", "status": "running"})

    settings = Settings(base_url="https://gw.test", api_key=KEY, session_budget=1000, **FAST_POLLING)
    store = MemoryLedgerStore()
    async with GatewayClient(settings.base_url, KEY, transport=httpx2.MockTransport(handler)) as client:
        accounts = Accounts(settings, client, store)
        async with accounts.running(), Client(build_server(settings, accounts=accounts)) as mcp:
            first = await call(mcp, "generate_video", **VIDEO)
            second = await call(mcp, "generate_video", **VIDEO)
            assert first["task_id"] == second["task_id"] == "task_same"
            assert (await store.totals("local")).reserved == 80
            assert watchers("task_same") == 1  # one watcher, however many creates named the task
            finished.set()
            done = await call(mcp, "poll_task", task_id="task_same", wait_seconds=10)
            await wait_until(lambda: watchers("task_same") == 0)  # and it stopped once the task ended
            totals = await store.totals("local")
    assert done["status"] == "succeeded" and polls
    assert totals == Totals(1000, 40, 0)  # one task, charged once; the other hold released


def watchers(task_id: str) -> int:
    """Task watchers alive in this event loop (the registry names each after its task)."""
    return sum(1 for task in asyncio.all_tasks() if task.get_name() == f"watch {task_id}" and not task.done())


def test_an_empty_state_file_refuses_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "state.sqlite3"
    empty.touch()
    with pytest.raises(StoreRefusedError, match="empty"):
        SqliteLedgerStore(empty)
    assert empty.stat().st_size == 0


def test_a_foreign_state_file_refuses_to_start(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(StoreRefusedError, match="not an apikey-mcp ledger"):
        SqliteLedgerStore(other)
    text = tmp_path / "text.sqlite3"
    text.write_text("hello, I am a text file and not a database at all" * 20)
    with pytest.raises(StoreRefusedError, match="cannot be used as the ledger"):
        SqliteLedgerStore(text)


V1_SCHEMA = """
CREATE TABLE principals (name TEXT PRIMARY KEY, budget INTEGER NOT NULL, spent INTEGER NOT NULL);
CREATE TABLE reservations (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL, credits INTEGER NOT NULL, purpose TEXT NOT NULL,
    task_id TEXT, state TEXT NOT NULL, charged INTEGER, updated_at REAL NOT NULL);
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY, principal TEXT NOT NULL, modality TEXT, reservation_id TEXT, own_key INTEGER NOT NULL,
    terminal INTEGER NOT NULL, body TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE callbacks (signature TEXT PRIMARY KEY, received_at REAL NOT NULL);
INSERT INTO principals VALUES ('alice', 1000, 120);
INSERT INTO reservations VALUES ('r1', 'alice', 40, 'video with seedance-2-fast', 'task_a', 'reserved', NULL, 1.0);
INSERT INTO reservations VALUES ('r2', 'alice', 120, 'image', 'task_b', 'settled', 120, 2.0);
INSERT INTO tasks VALUES ('task_a', 'alice', 'video', 'r1', 0, 0, '{}', 1.0);
"""


async def test_a_state_file_of_the_previous_version_is_migrated_whole(tmp_path: Path) -> None:
    old = tmp_path / "state.sqlite3"
    with sqlite3.connect(old) as conn:
        conn.executescript(V1_SCHEMA)
    store = SqliteLedgerStore(old)
    try:
        assert await store.totals("alice") == Totals(1000, 120, 40)
        (held,) = await store.reservations("alice", open_only=True)
        assert (held.id, held.task_id, held.modality, held.credits) == ("r1", "task_a", "video", 40)
        assert await store.settle("r1", 40)
        assert await store.totals("alice") == Totals(1000, 160, 0)
    finally:
        await store.aclose()
    reopened = SqliteLedgerStore(old)  # now an apikey-mcp ledger like any other
    assert await reopened.totals("alice") == Totals(1000, 160, 0)
    await reopened.aclose()


def test_the_server_refuses_to_start_on_an_empty_state_file(tmp_path: Path) -> None:
    from apikey_mcp.errors import ConfigError
    from apikey_mcp.hosted import create_app

    empty = tmp_path / "state.sqlite3"
    empty.touch()
    with pytest.raises(ConfigError, match="is empty"):
        create_app(Settings(transport="http", state_file=empty))


class BlindStore(MemoryLedgerStore):
    """A memory store that cannot be read once a reservation is made (a database gone mid-call)."""

    blind = False

    async def reserve(self, principal: str, credits: int, purpose: str, **options: Any):
        made = await super().reserve(principal, credits, purpose, **options)
        self.blind = True
        return made

    async def totals(self, principal: str, **options) -> Totals:
        if self.blind:
            raise LedgerUnavailableError("connection lost")
        return await super().totals(principal, **options)


async def test_a_created_task_is_reported_even_when_the_budget_cannot_be_read_after(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    store = BlindStore()
    async with connect("memory", settings_for(sandbox_server), store=store) as client:
        text = await call_error(client, "generate_video", **VIDEO)
    (task_id,) = sandbox.tasks
    assert f"Created video task {task_id} (40 credits reserved)" in text and "connection lost" in text


async def _settled(service) -> bool:
    return not (await totals(service)).reserved
