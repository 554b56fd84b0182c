"""The hosted server under uvicorn on a loopback port, against the sandbox, with two principals."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apikey_mcp.accounts import Accounts
from apikey_mcp.config import Settings
from apikey_mcp.hosted import create_app
from apikey_mcp.hosted.updates import ResourceUpdates
from apikey_mcp.sandbox import BackgroundServer, SandboxServer
from tests.conftest import KEY
from tests.harness import Processes, ServerProcess

ALICE = "alice-token-5f1c0e9a7b2d"
BOB = "bob-token-93e7a1c4d8f6"
TOKENS = f"alice={ALICE},bob={BOB}"


def hosted_settings(sandbox_server: SandboxServer, state_file: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": sandbox_server.url,
        "api_key": KEY,
        "transport": "http",
        "auth_tokens": TOKENS,
        "state_file": state_file,
        "public_url": url,
        "webhook_secret": sandbox_server.sandbox.webhook_secret,
        "poll_interval": 0.02,
        "max_poll_interval": 0.1,
        "session_budget": 1000,
        **overrides,
    }
    return Settings(**values)


HELLO = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO}


async def post_initialize(url: str, token: str | None) -> httpx2.Response:
    """One bare `initialize` POST (opens a Streamable HTTP session when it succeeds)."""
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(url, headers=headers, json=INIT)


class StreamWatch:
    """The app, counting the 2025-era GET /mcp streams it has opened: a server-initiated notification (such as
    resources/updated) reaches a legacy client only once its GET stream is open, which the client opens
    in the background after initializing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.opened = app, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].endswith("/mcp"):
            return await self.app(scope, receive, send)

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start" and message["status"] == 200:
                self.opened += 1

        await self.app(scope, receive, sending)


class Hosted:
    """A running hosted server and how to reach it."""

    def __init__(self, server: BackgroundServer, settings: Settings, app: Starlette, streams: StreamWatch) -> None:
        self.url = server.url
        self.settings = settings
        self.streams = streams
        self.accounts: Accounts = app.state.accounts
        self.updates: ResourceUpdates = app.state.updates

    @asynccontextmanager
    async def connect(
        self, transport: str, token: str | None, *, prefix: str = "", **options: Any
    ) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base = f"{self.url}{prefix}"
        if transport == "streamable-http":
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                async with Client(streamable_http_client(f"{base}/mcp", http_client=http), **options) as client:
                    yield client
        else:
            async with Client(sse_client(f"{base}/sse", headers=headers), **options) as client:
                yield client


@pytest.fixture
def hosted_factory(sandbox_server: SandboxServer, tmp_path: Path) -> Iterator:
    servers: list[BackgroundServer] = []

    def start(**overrides: Any) -> Hosted:
        state_file = overrides.pop("state_file", tmp_path / "state.sqlite3")
        timing = {name: overrides.pop(name) for name in ("poll_sleep", "poll_clock") if name in overrides}
        made: dict[str, Any] = {}

        def make(url: str):
            made["settings"] = hosted_settings(sandbox_server, state_file, url, **overrides)
            made["app"] = create_app(made["settings"], **timing)
            made["streams"] = StreamWatch(made["app"])
            return made["streams"]

        server = BackgroundServer.for_url(make).start()
        servers.append(server)
        return Hosted(server, made["settings"], made["app"], made["streams"])

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def hosted(hosted_factory) -> Hosted:
    return hosted_factory()


@pytest.fixture(params=["streamable-http", "sse"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Server processes a test starts (`start_process`): any still running at the end is killed."""
    started = Processes(tmp_path)
    yield started
    started.close(signal.SIGKILL)


def start_process(
    processes: Processes, sandbox_server: SandboxServer, state_file: Path | None, log: Path, **settings: str
) -> ServerProcess:
    """`apikey-mcp --transport http` in a process of its own, logging to `log` (appended: a restart shares it).
    `state_file` None: the ledger is wherever `settings` say (APIKEY_DATABASE_URL)."""
    env = {
        "APIKEY_BASE_URL": sandbox_server.url,
        "APIKEY_API_KEY": KEY,
        "APIKEY_MCP_AUTH_TOKENS": TOKENS,
        "APIKEY_POLL_INTERVAL": "0.05",
        "APIKEY_MAX_POLL_INTERVAL": "0.1",
        **settings,
    }
    args = ["--log-level", "INFO", *(["--state-file", str(state_file)] if state_file is not None else [])]
    return processes.hosted(env, *args, transport="http", log=log)


def reach(server: ServerProcess) -> Hosted:
    """How to connect to a server process as to the `hosted` fixture's server."""
    hosted = Hosted.__new__(Hosted)
    hosted.url = server.url
    return hosted
