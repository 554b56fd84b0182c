"""Three replicas of the hosted server behind nginx round-robin, on one PostgreSQL database and one sandbox.

Started once per session (the machine has 2 cores): the replicas are real `apikey-mcp` processes on
loopback ports, nginx runs the shipped `deploy/nginx.conf` with those ports put in, and the sandbox runs in
this process so tests can hold its tasks and read its counters. Leases are short (3 s), polling is slow
(30 s): tasks end by callbacks, which is what the tests look at. Without PostgreSQL or nginx the tests skip
locally and fail in CI.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests import harness
from tests.conftest import KEY, free_port
from tests.harness import ServerProcess, clean_env, start_nginx
from tests.ledger.conftest import postgres_schema
from tests.provision import program

ROOT = Path(__file__).resolve().parents[2]
PRINCIPALS = ["p1", "p2", "p3", "p4", "carol", "dave", "erin"]
TOKENS = {name: f"{name}-token-{i:02d}-5f1c0e9a7b2d" for i, name in enumerate(PRINCIPALS)}
IMAGE_CREDITS = 2  # flux-schnell, one 1024x1024 image, at the sandbox's prices
TASKS_EACH = 5
BUDGET = TASKS_EACH * IMAGE_CREDITS + 1  # room for TASKS_EACH images and not one more
LEASE_SECONDS = 3.0
STATE_KEY = "k" * 16 + "0123456789abcdef0123456789abcdef"


Replica = ServerProcess  # .port, .url, .process (the Popen), .log


@dataclass
class Cluster:
    url: str  # nginx
    replicas: list[Replica]
    sandbox_server: SandboxServer
    database_url: str
    env: dict[str, str]
    tmp: Path

    @property
    def sandbox(self) -> Sandbox:
        return self.sandbox_server.sandbox

    @asynccontextmanager
    async def connect(self, principal: str, url: str | None = None, **options: Any):
        """An MCP client of `principal` through the balancer (or straight to one replica's URL)."""
        headers = {"Authorization": f"Bearer {TOKENS[principal]}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with Client(streamable_http_client(f"{url or self.url}/mcp", http_client=http), **options) as c:
                yield c

    def sql(self, query: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []


def start_replica(env: dict[str, str], tmp: Path, port: int | None = None) -> Replica:
    # the balancer's address, as deploy/nginx.conf says
    return harness.start_replica(env, tmp, "--forwarded-allow-ips", "127.0.0.1", port=port).ready()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nginx = program("nginx")
    tmp = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_schema())
        sandbox = Sandbox([KEY], credits=1_000_000, task_seconds=0.05, seed=11)
        sandbox_server = stack.enter_context(SandboxServer(sandbox))
        balancer_port = free_port()
        balancer = f"http://127.0.0.1:{balancer_port}"
        env = clean_env(
            {  # only what is set here
                "APIKEY_BASE_URL": sandbox_server.url,
                "APIKEY_API_KEY": KEY,
                "APIKEY_DATABASE_URL": database_url,
                "APIKEY_REQUEST_STATE_KEY": STATE_KEY,
                "APIKEY_MCP_AUTH_TOKENS": ",".join(f"{n}={t}" for n, t in TOKENS.items()),
                "APIKEY_PUBLIC_URL": balancer,
                "APIKEY_WEBHOOK_SECRET": sandbox.webhook_secret,
                "APIKEY_SESSION_BUDGET": str(BUDGET),
                "APIKEY_POLL_INTERVAL": "30",
                "APIKEY_MAX_POLL_INTERVAL": "30",
                "APIKEY_LEASE_SECONDS": str(LEASE_SECONDS),
                "APIKEY_LOG_LEVEL": "INFO",
            }
        )
        replicas: list[Replica] = []
        stack.callback(lambda: [r.stop() for r in replicas])  # those running at the end (one may be new)
        replicas += [start_replica(env, tmp) for _ in range(3)]
        proxy = start_nginx(nginx, tmp / "nginx", balancer_port, [r.port for r in replicas])
        stack.callback(proxy.stop, signal.SIGQUIT)
        proxy.ready()
        yield Cluster(balancer, replicas, sandbox_server, database_url, env, tmp)


@pytest.fixture
def held(cluster: Cluster) -> Iterator[Sandbox]:
    """The cluster's sandbox with its task clock stopped: tasks wait for `advance`."""
    cluster.sandbox.hold = True
    yield cluster.sandbox
    cluster.sandbox.hold = False
