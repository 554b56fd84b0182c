"""Shared fixtures: the sandbox gateway as a real HTTP server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apikey_mcp.sandbox import Sandbox, SandboxServer

KEY = "sk-sandbox-test-3b1f9c0d2e7a"
OTHER_KEY = "sk-sandbox-other-8d2c4a6f"


@pytest.fixture
def sandbox_server() -> Iterator[SandboxServer]:
    """A fresh sandbox (its own wallets and tasks) per test; tasks end 50 ms after they are created."""
    with SandboxServer(Sandbox([KEY, OTHER_KEY], credits=10_000, task_seconds=0.05, seed=7)) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Sandbox:
    return sandbox_server.sandbox
