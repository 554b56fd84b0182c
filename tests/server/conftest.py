"""MCP clients connected to the server in-process or over a real stdio subprocess, against the sandbox."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, ElicitResult

from apikey_mcp.budget import Ledger, LedgerStore, Totals
from apikey_mcp.config import Settings
from apikey_mcp.gateway import GatewayClient
from apikey_mcp.sandbox import SandboxServer
from apikey_mcp.server import build_server
from apikey_mcp.service import Service
from apikey_mcp.stores import MemoryLedgerStore
from apikey_mcp.tasks import TaskRegistry
from tests.conftest import KEY, wait_until

FAST_POLLING = {"poll_interval": 0.01, "max_poll_interval": 0.05}


def settings_for(server: SandboxServer, **overrides: Any) -> Settings:
    values = {"base_url": server.url, "api_key": KEY, "session_budget": 1000, **FAST_POLLING, **overrides}
    return Settings(**values)


def stdio_env(settings: Settings) -> dict[str, str]:
    """The settings as the environment of a server subprocess (how Claude Desktop passes them too)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "SYSTEMROOT", "XDG_DATA_HOME") if k in os.environ}
    for name, value in settings.model_dump(exclude_none=True).items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"APIKEY_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    return env


@asynccontextmanager
async def connect(
    transport: str,
    settings: Settings,
    *,
    store: LedgerStore | None = None,
    server_options: dict[str, Any] | None = None,
    **client_options: Any,
) -> AsyncIterator[Client]:
    """A client of the server over `transport`; `server_options` go to `build_server` (in memory only)."""
    if transport == "memory":
        target: Any = build_server(settings, store=store, **(server_options or {}))
    else:
        assert store is None, "a subprocess has its own ledger"
        target = StdioServerParameters(command=sys.executable, args=["-m", "apikey_mcp"], env=stdio_env(settings))
    async with Client(target, **client_options) as client:
        yield client


@pytest.fixture(params=["memory"])
def transport(request: pytest.FixtureRequest) -> str:
    """The behaviour matrix runs in memory; test_stdio.py adds the subprocess where only stdio can show it."""
    return request.param


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured content."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail; the text the agent reads."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return text_of(result)


async def poll_until_saved(client: Client, task_id: str, wait_seconds: float = 10) -> dict[str, Any]:
    """poll_task until the task succeeded and the save of its files ended (saved, refused or failed): the last
    result. The first look at a succeeded task starts the save."""
    last: dict[str, Any] = {}

    async def ended() -> bool:
        last.update(await call(client, "poll_task", task_id=task_id, wait_seconds=wait_seconds))
        return last["status"] == "succeeded" and "under way" not in last["next_step"]

    await wait_until(ended)
    return last


async def no_wait(seconds: float) -> None:
    """A sleep that returns at once: the gateway client's retries happen, their waits do not (tests own time)."""


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def local_ledger(budget: int, store: LedgerStore | None = None) -> Ledger:
    """The stdio principal's ledger on a store of its own (or the one given)."""
    store = store or MemoryLedgerStore()
    await store.ensure_principal("local", budget)
    return Ledger(store, "local")


async def totals(service: Service) -> Totals:
    return await service.ledger.totals()


@asynccontextmanager
async def running_service(
    server: SandboxServer, budget: int = 1000, *, store: LedgerStore | None = None, **overrides: Any
) -> AsyncIterator[Service]:
    """The service without MCP around it (a fixture cannot own a task group across setup and teardown)."""
    settings = settings_for(server, session_budget=budget, **overrides)
    async with GatewayClient(server.url, KEY) as client:
        ledger = await local_ledger(budget, store)
        registry = TaskRegistry(client, ledger, **FAST_POLLING)
        async with registry.running():
            yield Service(settings, client, ledger, registry)


def answering(action: str, approve: bool | None = None):
    """An elicitation callback that answers every question with `action` (and `approve`); the questions asked."""

    async def elicitation(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action=action, content=None if approve is None else {"approve": approve})

    asked: list[str] = []
    return elicitation, asked
