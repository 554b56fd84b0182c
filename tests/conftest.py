"""Shared fixtures: the sandbox gateway as a real HTTP server on a loopback port."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.harness import free_port, wait_until
from tests.provision import ROOT, Session

__all__ = ["free_port", "wait_until"]  # for the tests that import them from here

_session: Session | None = None


def pytest_configure(config: pytest.Config) -> None:
    """The controller (or the only process) provisions once; xdist workers inherit it through the environment."""
    global _session
    if not hasattr(config, "workerinput"):
        _session = Session()
        _session.setup()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _session.lines if _session else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share an expensive session or module fixture (the replica cluster, the OAuth issuer) run on
    one xdist worker, so that it starts once."""
    for item in items:
        module = item.path.relative_to(ROOT).as_posix()
        if module.startswith("tests/replicas/"):
            _group(config, item, "replicas")
        elif "issuer" in getattr(item, "fixturenames", ()):
            _group(config, item, "oauth-issuer")


def _group(config: pytest.Config, item: pytest.Item, name: str) -> None:
    """Mark `item` for the xdist group `name`. pytest-xdist 3.8 then names the group in the node id by setting
    `_nodeid`, which pytest 9.2 no longer reads (the id is `_id`): the groups were ignored and the replica
    cluster ran on several workers at once, on one PostgreSQL. So the id is named here, as xdist means to."""
    item.add_marker(pytest.mark.xdist_group(name))
    if config.getoption("loadgroup", default=False) and hasattr(item, "_id") and "@" not in item.nodeid:
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(f"{item.nodeid}@{name}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session is not None:
        _session.teardown()


KEY = "sk-sandbox-test-3b1f9c0d2e7a"
OTHER_KEY = "sk-sandbox-other-8d2c4a6f"


@pytest.fixture(autouse=True)
def no_apikey_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read APIKEY_* from the environment: a developer's own must not change what tests see. The
    suite's own APIKEY_TEST_* (the test database, CI's program count) stay: no setting has that prefix."""
    for name in [name for name in os.environ if name.startswith("APIKEY_") and not name.startswith("APIKEY_TEST_")]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def own_data_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's data folder (where the stdio server keeps its ledger by default) is the test's own, so no test
    ever touches the real one; subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("xdg-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(folder))
    return folder


@pytest.fixture
def sandbox_server() -> Iterator[SandboxServer]:
    """A fresh sandbox (its own wallets and tasks) per test; tasks end 50 ms after they are created."""
    with SandboxServer(Sandbox([KEY, OTHER_KEY], credits=10_000, task_seconds=0.05, seed=7)) as server:
        yield server
        for gate in server.sandbox.faults.gates.values():
            gate.set()  # a request a failed test left held must not keep the server from stopping


@pytest.fixture
def unreachable_url() -> Iterator[str]:
    """A loopback address that refuses connections for the whole test: bound, never listening, so no other
    process can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Sandbox:
    return sandbox_server.sandbox


async def advance(
    server: SandboxServer, task_id: str, to: str = "succeeded", *, progress: float | None = None, key: str = KEY
) -> dict:
    """Move a sandbox task on now (the test owns the task clock): to running, succeeded or failed."""
    body: dict[str, object] = {"to": to} | ({"progress": progress} if progress is not None else {})
    async with httpx2.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http:
        response = await http.post(f"/sandbox/tasks/{task_id}/advance", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def held(sandbox: Sandbox) -> Sandbox:
    """The sandbox with its task clock stopped: new tasks stay pending until the test calls `advance`."""
    sandbox.hold = True
    return sandbox


def gate(sandbox: Sandbox, route: str) -> threading.Event:
    """Hold the sandbox's requests of `route` ("POST /v1/videos") in flight, counted but unanswered, until
    the returned event is set."""
    held = sandbox.faults.gates[route] = threading.Event()
    return held


@pytest.fixture
def own_postgres() -> Iterator[object]:
    """A PostgreSQL cluster of the test's own (tests/pg_cluster.py), which it may stop and restart."""
    from tests.pg_cluster import Cluster

    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.close()
