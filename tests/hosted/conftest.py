"""The hosted server under uvicorn on a loopback port, against the sandbox, with two principals."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from apikey_mcp.config import Settings
from apikey_mcp.hosted import create_app
from apikey_mcp.sandbox import BackgroundServer, SandboxServer
from tests.conftest import KEY

ALICE = "alice-token-5f1c0e9a7b2d"
BOB = "bob-token-93e7a1c4d8f6"
TOKENS = f"alice={ALICE},bob={BOB}"


def hosted_settings(sandbox_server: SandboxServer, state_file: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": sandbox_server.url, "api_key": KEY, "transport": "http", "auth_tokens": TOKENS,
        "state_file": state_file, "public_url": url, "webhook_secret": sandbox_server.sandbox.webhook_secret,
        "poll_interval": 0.02, "max_poll_interval": 0.1, "session_budget": 1000, **overrides,
    }  # fmt: skip
    return Settings(**values)


class Hosted:
    """A running hosted server and how to reach it."""

    def __init__(self, server: BackgroundServer, settings: Settings) -> None:
        self.url = server.url
        self.settings = settings

    @asynccontextmanager
    async def connect(self, transport: str, token: str | None, **options: Any) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if transport == "streamable-http":
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                async with Client(streamable_http_client(f"{self.url}/mcp", http_client=http), **options) as client:
                    yield client
        else:
            async with Client(sse_client(f"{self.url}/sse", headers=headers), **options) as client:
                yield client


@pytest.fixture
def hosted_factory(sandbox_server: SandboxServer, tmp_path: Path) -> Iterator:
    servers: list[BackgroundServer] = []

    def start(**overrides: Any) -> Hosted:
        state_file = overrides.pop("state_file", tmp_path / "state.sqlite3")
        made: dict[str, Settings] = {}

        def make(url: str):
            made["settings"] = hosted_settings(sandbox_server, state_file, url, **overrides)
            return create_app(made["settings"])

        server = BackgroundServer.for_url(make).start()
        servers.append(server)
        return Hosted(server, made["settings"])

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
def processes() -> Iterator[list[Any]]:
    """Server subprocesses a test starts (test_restart.Process): any still running at the end is killed."""
    started: list[Any] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
