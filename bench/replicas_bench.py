"""Replicas behind nginx: throughput and latency with 1 and with 3 replicas of apikey-mcp, in one run.

Each configuration gets a fresh PostgreSQL schema, N replica processes (`--transport streamable-http`,
replica mode) and nginx running deploy/nginx.conf with their ports. The sandbox gateway runs as its own
process (0.2 s tasks, callbacks to the balancer). Through the balancer it measures:

* budget_status: C clients, each making K sequential calls, all at once: calls/s, per-call p50/p99;
* generate_image + poll_task(wait_seconds=10) until the task ends: C clients, R rounds each: rounds/s and
  the p50/p99 of a whole round (the task's 0.2 s included; callbacks end it).

Needs PostgreSQL (APIKEY_TEST_DATABASE_URL, e.g. `$(.ci/postgres start /tmp/apikey-pg)`) and nginx.
Run: `python bench/replicas_bench.py` (see bench/README.md). The last line is every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from http_bench import cpu_seconds
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

# http_bench imported stdio_bench, which put the repository root on sys.path for tests/harness.py
from tests.harness import Percentiles, Processes, free_port, postgres_schema, private_data_home

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench-" + secrets.token_hex(8)
PRINCIPALS = [f"bench{i}" for i in range(4)]
TOKENS = {p: f"{p}-{secrets.token_hex(12)}" for p in PRINCIPALS}
IMAGE = {"prompt": "a lighthouse at dusk", "model": "flux-schnell"}


def percentiles(samples: list[float]) -> dict[str, float]:
    p = Percentiles.of(samples)
    return {"p50_ms": round(p.p50, 1), "p99_ms": round(p.p99, 1)}


@contextmanager
def fleet(replicas: int, database: str, sandbox_url: str, secret: str, tmp: Path) -> Iterator[tuple[str, list[int]]]:
    """`replicas` apikey-mcp processes behind nginx; yields the balancer's URL and the replicas' pids."""
    with ExitStack() as stack:
        url = stack.enter_context(postgres_schema(database, "bench"))
        tmp.mkdir(parents=True)
        procs = stack.enter_context(Processes(tmp))
        port = free_port()
        balancer = f"http://127.0.0.1:{port}"
        settings = {
            "APIKEY_BASE_URL": sandbox_url,
            "APIKEY_API_KEY": KEY,
            "APIKEY_DATABASE_URL": url,
            "APIKEY_REQUEST_STATE_KEY": secrets.token_hex(32),
            "APIKEY_PUBLIC_URL": balancer,
            "APIKEY_WEBHOOK_SECRET": secret,
            "APIKEY_SESSION_BUDGET": str(10**9),
            "APIKEY_LOG_LEVEL": "WARNING",
            "APIKEY_MCP_AUTH_TOKENS": ",".join(f"{p}={t}" for p, t in TOKENS.items()),
        }
        servers = [procs.replica(settings) for _ in range(replicas)]
        for server in servers:
            server.ready()
        proxy = procs.nginx(shutil.which("nginx") or "/usr/sbin/nginx", servers, port)
        stack.callback(procs.stop, proxy, signal.SIGQUIT)
        proxy.ready()
        yield balancer, [server.pid for server in servers]


async def clients_do(url: str, clients: int, each: Callable[[Client], Awaitable[None]]) -> float:
    """Connect `clients` clients (spread over the principals), then run `each` on all at once; seconds taken."""
    async with anyio.create_task_group() as group:
        ready, go = anyio.Event(), anyio.Event()
        connected = 0
        spans: list[float] = []

        async def one(i: int) -> None:
            nonlocal connected
            headers = {"Authorization": f"Bearer {TOKENS[PRINCIPALS[i % len(PRINCIPALS)]]}"}
            async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
                async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
                    await client.call_tool("budget_status", {})  # warm: tool list and schemas cached
                    connected += 1
                    if connected == clients:
                        ready.set()
                    await go.wait()
                    await each(client)

        for i in range(clients):
            group.start_soon(one, i)
        await ready.wait()
        start = time.perf_counter()
        go.set()
    spans.append(time.perf_counter() - start)
    return spans[0]


async def measure(url: str, pids: list[int], clients: int, calls: int, rounds: int) -> dict[str, Any]:
    status_ms: list[float] = []
    round_ms: list[float] = []

    async def statuses(client: Client) -> None:
        for _ in range(calls):
            t = time.perf_counter()
            result = await client.call_tool("budget_status", {})
            status_ms.append((time.perf_counter() - t) * 1000)
            assert not result.is_error and result.structured_content, result.content

    async def media(client: Client) -> None:
        for _ in range(rounds):
            t = time.perf_counter()
            created = await client.call_tool("generate_image", IMAGE)
            assert not created.is_error and created.structured_content, created.content
            task_id = created.structured_content["task_id"]
            for _ in range(10):
                polled = await client.call_tool("poll_task", {"task_id": task_id, "wait_seconds": 10})
                assert not polled.is_error and polled.structured_content, polled.content
                if polled.structured_content["status"] in ("succeeded", "failed"):
                    break
            else:
                raise AssertionError(f"task {task_id} did not end")
            round_ms.append((time.perf_counter() - t) * 1000)

    def cpu() -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    figures = {}
    for what, each, samples in (("budget_status", statuses, status_ms), ("generate_poll", media, round_ms)):
        before = cpu()
        seconds = await clients_do(url, clients, each)
        figures[what] = (len(samples) / seconds, samples, (cpu() - before) * 1000 / len(samples))
    return figures


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration measured twice: mean throughput, percentiles of every sample."""
    return {
        what: {
            "per_s": round(statistics.mean(r[what][0] for r in runs), 1),
            **percentiles([ms for r in runs for ms in r[what][1]]),
            "replica_cpu_ms_each": round(statistics.mean(r[what][2] for r in runs), 2),
        }
        for what in runs[0]
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=25, help="budget_status calls per client, per run")
    parser.add_argument("--rounds", type=int, default=3, help="generate + poll rounds per client, per run")
    parser.add_argument("--database-url", default=os.environ.get("APIKEY_TEST_DATABASE_URL"))
    opts = parser.parse_args(argv)
    if not opts.database_url:
        raise SystemExit("set APIKEY_TEST_DATABASE_URL (e.g. $(.ci/postgres start /tmp/apikey-pg)) or --database-url")
    private_data_home()  # the servers' data: never the user's real ledger
    secret = "whsec_" + secrets.token_hex(16)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="replicas-bench-") as tmp, Processes() as procs:
        sandbox_url = procs.sandbox([KEY], credits=10**9, task_seconds=0.2, webhook_secret=secret).ready().url
        runs: dict[int, list[dict[str, Any]]] = {1: [], 3: []}
        for i, n in enumerate((1, 3, 3, 1)):  # ABBA: drift in the machine's load hits both alike
            with fleet(n, opts.database_url, sandbox_url, secret, Path(tmp) / str(i)) as (url, pids):
                runs[n].append(anyio.run(measure, url, pids, opts.clients, opts.calls, opts.rounds))
        results["1_replica"], results["3_replicas"] = combine(runs[1]), combine(runs[3])
    one, three = results["1_replica"], results["3_replicas"]
    results["ratio_3_over_1"] = {k: round(three[k]["per_s"] / one[k]["per_s"], 2) for k in one}
    results["setup"] = {"clients": opts.clients, "calls": opts.calls, "rounds": opts.rounds, "cpus": os.cpu_count()}
    for name in ("1_replica", "3_replicas"):
        for what, figures in results[name].items():
            print(
                f"{name:10} {what:14} {figures['per_s']:8.1f}/s  p50 {figures['p50_ms']:7.1f} ms  "
                f"p99 {figures['p99_ms']:7.1f} ms  replicas' CPU {figures['replica_cpu_ms_each']:6.2f} ms/call"
            )
    print("3 replicas / 1 replica, throughput:", results["ratio_3_over_1"])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
