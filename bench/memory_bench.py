"""Whether hosted memory stays bounded: RSS after many finished tasks and many refused subscriptions.

One run starts the sandbox gateway and two apikey-mcp servers (`--transport streamable-http`, same settings,
task retention `--retention` seconds). Both are warmed alike (every code path the load takes runs once), then:

* tasks: `--tasks` image tasks are created on the loaded server by `--clients` concurrent clients and left to
  the server's watchers to finish and settle; once all are settled and the retention has passed, one more task
  lets the finished ones go. RSS growth is measured against the loaded server's own warm figure, and the
  loaded server is compared with the fresh one at the same moment;
* subscriptions: `--subscriptions` `resources/subscribe` requests (2025-era clients) for 4 KB task URIs the
  principal does not own, all refused, on the same server.

Target: under 20 MB growth after each phase. Run: `python bench/memory_bench.py` (see bench/README.md); the last
line printed is every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from http_bench import Proc, rss_kib
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from stdio_bench import BenchError, source_version

# stdio_bench, imported first, put the repository root on sys.path for tests/harness.py
from tests.harness import Processes, private_data_home

TARGET_MIB = 20.0
TOKEN = "bench-" + secrets.token_hex(16)
SETTLE_SECONDS = 1.0


def start_server(procs: Processes, name: str, sandbox: Proc, key: str, state_dir: Path, retention: float) -> Proc:
    settings = {
        "APIKEY_BASE_URL": sandbox.url,
        "APIKEY_API_KEY": key,
        "APIKEY_SESSION_BUDGET": "100000000",
        "APIKEY_MCP_AUTH_TOKENS": f"bench={TOKEN}",
        "APIKEY_TASK_RETENTION_SECONDS": str(retention),
        "APIKEY_POLL_INTERVAL": "0.05",
        "APIKEY_MAX_POLL_INTERVAL": "0.2",
    }
    args = ["--state-file", str(state_dir / f"{name}.sqlite3"), "--log-level", "WARNING"]
    return procs.hosted(settings, *args, name=name)


@asynccontextmanager
async def connect(server: Proc, mode: str = "auto") -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode) as client:
            yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error or result.structured_content is None:
        raise BenchError(f"{tool} failed: {result.content}")
    return result.structured_content


async def create_tasks(server: Proc, count: int, clients: int) -> None:
    left = [count]

    async def one_client() -> None:
        async with connect(server) as client:
            while left[0] > 0:
                left[0] -= 1
                await call(client, "generate_image", prompt="bench", model="flux-schnell")

    async with anyio.create_task_group() as group:
        for _ in range(clients):
            group.start_soon(one_client)


async def settled(server: Proc, timeout: float) -> None:
    """Until the server's watchers have ended every task and closed every reservation."""
    async with connect(server) as client:
        with anyio.fail_after(timeout):
            while (await call(client, "budget_status"))["reserved"]:  # noqa: ASYNC110 (another process's state)
                await anyio.sleep(0.2)


async def refuse_subscriptions(server: Proc, count: int, clients: int) -> int:
    refused = [0]
    left = [count]

    async def one_client() -> None:
        async with connect(server, mode="legacy") as client:
            while left[0] > 0:
                left[0] -= 1
                uri = "apikey://tasks/" + secrets.token_hex(2048)  # 4 KB, nobody's task
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", MCPDeprecationWarning)
                        await client.subscribe_resource(uri)
                except MCPError:
                    refused[0] += 1

    async with anyio.create_task_group() as group:
        for _ in range(clients):
            group.start_soon(one_client)
    return refused[0]


async def warm(server: Proc, retention: float) -> None:
    """Every path the load takes, once: a task created, polled, let go of; a subscription refused."""
    async with connect(server) as client:
        task = await call(client, "generate_image", prompt="warm", model="flux-schnell")
        await call(client, "poll_task", task_id=task["task_id"], wait_seconds=10)
    await refuse_subscriptions(server, 10, 1)
    await anyio.sleep(retention)
    async with connect(server) as client:
        await call(client, "generate_image", prompt="warm again", model="flux-schnell")
    await settled(server, 30)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    key = "sk-bench-" + secrets.token_hex(8)
    with Processes() as procs, tempfile.TemporaryDirectory() as state_dir:
        sandbox = await procs.sandbox([key], task_seconds=0, credits=1000000000).wait_ready(seconds=30)
        fresh = start_server(procs, "fresh", sandbox, key, Path(state_dir), args.retention)
        loaded = start_server(procs, "loaded", sandbox, key, Path(state_dir), args.retention)
        for server in (fresh, loaded):
            await server.wait_ready(seconds=30)
            await warm(server, args.retention)
        await anyio.sleep(SETTLE_SECONDS)
        figures: dict[str, Any] = {"warm_kib": {"fresh": rss_kib(fresh.pid), "loaded": rss_kib(loaded.pid)}}

        started = time.perf_counter()
        await create_tasks(loaded, args.tasks, args.clients)
        await settled(loaded, 600)
        await anyio.sleep(args.retention)
        async with connect(loaded) as client:  # tracking one more task lets the finished ones go
            await call(client, "generate_image", prompt="last", model="flux-schnell")
        await settled(loaded, 60)
        await anyio.sleep(SETTLE_SECONDS)
        figures["tasks_seconds"] = round(time.perf_counter() - started, 1)
        figures["after_tasks_kib"] = {"fresh": rss_kib(fresh.pid), "loaded": rss_kib(loaded.pid)}

        started = time.perf_counter()
        refused = await refuse_subscriptions(loaded, args.subscriptions, args.clients)
        if refused != args.subscriptions:
            raise BenchError(f"only {refused} of {args.subscriptions} subscriptions were refused")
        await anyio.sleep(SETTLE_SECONDS)
        figures["subscriptions_seconds"] = round(time.perf_counter() - started, 1)
        figures["after_subscriptions_kib"] = {"fresh": rss_kib(fresh.pid), "loaded": rss_kib(loaded.pid)}
    warm_kib, tasks_kib, subs_kib = (
        figures[k]["loaded"] for k in ("warm_kib", "after_tasks_kib", "after_subscriptions_kib")
    )
    figures["growth_mib"] = {
        "tasks": round((tasks_kib - warm_kib) / 1024, 1),
        "subscriptions": round((subs_kib - tasks_kib) / 1024, 1),
        "loaded_minus_fresh_at_end": round((subs_kib - figures["after_subscriptions_kib"]["fresh"]) / 1024, 1),
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--subscriptions", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--retention", type=float, default=2.0, help="seconds a finished task stays in memory")
    args = parser.parse_args()
    private_data_home()  # the servers' data: never the user's real ledger
    figures = anyio.run(measure, args)
    growth = figures["growth_mib"]
    warm_mib = {name: round(kib / 1024, 1) for name, kib in figures["warm_kib"].items()}
    print(f"RSS warm: fresh {warm_mib['fresh']} MiB, loaded {warm_mib['loaded']} MiB")
    print(
        f"after {args.tasks} finished tasks ({figures['tasks_seconds']} s): +{growth['tasks']} MiB "
        f"(target < {TARGET_MIB}) {'OK' if growth['tasks'] < TARGET_MIB else 'OVER'}"
    )
    print(
        f"after {args.subscriptions} refused 4 KB subscriptions ({figures['subscriptions_seconds']} s): "
        f"+{growth['subscriptions']} MiB {'OK' if growth['subscriptions'] < TARGET_MIB else 'OVER'}"
    )
    print(f"loaded - fresh at the end: {growth['loaded_minus_fresh_at_end']} MiB")
    print(json.dumps({"bench": "memory", "source": source_version(), **vars(args), **figures}))


if __name__ == "__main__":
    main()
