"""What apikey-mcp's hosted mode costs over Streamable HTTP, against a bare MCPServer served the same way.

One run starts three processes on loopback ports: the sandbox gateway, apikey-mcp hosted
(`--transport streamable-http`, 50 principals with a bearer token each) and echo_http_server.py (a bare MCPServer
with one echo tool under uvicorn, no auth). Then it measures:

* load: many clients, each connected once, each making N sequential calls (budget_status on ours, echo on the
  bare server), all at the same time: calls/s, per-call p50/p99, and the CPU each process spent per call;
* mix: the same clients each doing generate_image then poll_task(wait_seconds=10) until the task succeeds, a few
  rounds after one unmeasured round: rounds/s and the p50/p99 of each tool;
* memory: the server's RSS with no session open and with M idle sessions open, on fresh server processes, for
  both servers and for both ways a client connects (the 2026-07-28 protocol, per request and without a
  server-side session, and the handshake-era protocol with an `Mcp-Session-Id` session).

Targets: ours >= 0.8 x the bare server's calls/s (and, beside it, the same on server CPU per call, which is what
the calls/s ratio would be if the server and not the one client process were the bottleneck); p99 < 5 x p50 on
ours; ours <= 256 KiB per open session. Run: `python bench/http_bench.py` (see bench/README.md). The last line
printed is every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.streamable_http_manager import DEFAULT_MAX_SESSIONS
from mcp.types import CallToolResult, TextContent
from stdio_bench import BenchError, source_version

# stdio_bench, imported first, put the repository root on sys.path for tests/harness.py
from tests.harness import Percentiles, Processes, free_port, private_data_home
from tests.harness import ServerProcess as Proc

BENCH = Path(__file__).resolve().parent
ECHO_HTTP_SERVER = BENCH / "echo_http_server.py"
OURS, ECHO = "apikey-mcp", "echo server"
THROUGHPUT_TARGET = 0.8  # ours / bare calls per second, at least
TAIL_TARGET = 5.0  # p99 / p50, under
SESSION_TARGET_KIB = 256.0  # ours, per open session, at most
MODES = ("auto", "legacy")  # how a client connects: 2026-07-28 if the server speaks it, or the initialize handshake
READY_TIMEOUT = 30.0
SETTLE_SECONDS = 1.0  # before reading RSS: let the server finish what the last connections started
MAX_POLLS = 10  # per generate round; with wait_seconds=10 a 0.2 s sandbox task ends within the first one or two
CONNECT_CONCURRENCY = 25  # clients connecting at the same time, in the memory phase
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the processes


def start_sandbox(procs: Processes, key: str) -> Proc:
    return procs.sandbox([key], task_seconds=0.2, credits=1000000000)


def start_ours(procs: Processes, sandbox: Proc, key: str, tokens: dict[str, str], state_dir: Path) -> Proc:
    """apikey-mcp hosted over Streamable HTTP; a fresh state file each time, so no run inherits another's."""
    port = free_port()
    settings = {
        "APIKEY_BASE_URL": sandbox.url,
        "APIKEY_API_KEY": key,
        "APIKEY_SESSION_BUDGET": "100000000",
        "APIKEY_MCP_AUTH_TOKENS": ",".join(f"{name}={token}" for name, token in tokens.items()),
    }
    state_file = state_dir / f"state-{port}.sqlite3"
    return procs.hosted(settings, "--state-file", str(state_file), "--log-level", "WARNING", port=port)


def start_echo(procs: Processes) -> Proc:
    port = free_port()
    return procs.start("echo server", [sys.executable, str(ECHO_HTTP_SERVER), "--port", str(port)], port=port)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process, all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def open_sockets(pid: int) -> int:
    """Sockets the process holds: tells whether idle sessions still hold a connection on the server's side."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass  # closed between the listing and the readlink
    return count


def raise_fd_limit(needed: int) -> None:
    """Each open session holds up to two connections, each a descriptor in the client and one in the server
    (the servers inherit this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(f"need {needed} open files but the hard limit is {hard}: lower --sessions or raise it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# ---------------------------------------------------------------- clients


@dataclass(frozen=True)
class Target:
    """A server measured, and the call that stands for a cheap request on it."""

    label: str
    proc: Proc
    tool: str
    arguments: dict[str, object]
    check: Callable[[CallToolResult], object]
    tokens: list[str | None]  # client i uses tokens[i % len(tokens)]

    def token(self, i: int) -> str | None:
        return self.tokens[i % len(self.tokens)]


@asynccontextmanager
async def connect(url: str, token: str | None, mode: str) -> AsyncIterator[Client]:
    """One client on its own HTTP connection pool, as a separate agent would be."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30.0) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client:
            yield client


class Gate:
    """Lets every client finish getting ready (or finish measuring) before any goes on."""

    def __init__(self, parties: int) -> None:
        self._waiting = parties
        self.all_arrived = anyio.Event()
        self.open = anyio.Event()

    def arrive(self) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            self.all_arrived.set()

    async def pass_through(self) -> None:
        self.arrive()
        await self.open.wait()


async def timed(call: Callable[[], Awaitable[CallToolResult]], samples: list[float]) -> CallToolResult:
    """The call's latency appended to `samples`; the caller checks the answer after, outside the timed span."""
    started = time.perf_counter()
    result = await call()
    samples.append((time.perf_counter() - started) * 1000)
    return result


def text_of(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


def structured(result: CallToolResult, what: str) -> dict[str, Any]:
    if result.is_error or result.structured_content is None:
        raise BenchError(f"{what} failed: {text_of(result)}")
    content: dict[str, Any] = result.structured_content
    return content


def check_budget(result: CallToolResult) -> None:
    if "remaining" not in structured(result, "budget_status"):
        raise BenchError(f"budget_status answered without a budget: {text_of(result)}")


def check_echo(result: CallToolResult) -> None:
    if result.is_error or text_of(result) != "bench":
        raise BenchError(f"echo answered {text_of(result)!r}")


def check_created(result: CallToolResult) -> str:
    content = structured(result, "generate_image")
    if content.get("status") not in ("pending", "running", "succeeded"):
        raise BenchError(f"generate_image made a task that is {content.get('status')!r}: {text_of(result)}")
    return str(content["task_id"])


def check_polled(result: CallToolResult) -> str:
    status = str(structured(result, "poll_task").get("status"))
    if status == "failed":
        raise BenchError(f"the sandbox task failed: {text_of(result)}")
    return status


@dataclass
class Usage:
    """Wall time of a measured phase and the CPU each side spent in it."""

    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    gateway_cpu_s: float = 0.0  # the sandbox's, where the phase calls it


async def together(
    clients: int,
    worker: Callable[[int, Gate, Gate], Coroutine[Any, Any, None]],
    pid: int,
    timeout: float,
    gateway_pid: int | None = None,
) -> Usage:
    """Run `worker(i, ready, done)` for every client; time from the moment all are ready until all are done.

    A worker connects and warms up, passes `ready`, measures, then passes `done` and only then disconnects, so
    neither connecting nor closing overlaps anyone's measured calls.
    """
    ready, done = Gate(clients), Gate(clients)
    usage = Usage()
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as group:
            for i in range(clients):
                group.start_soon(worker, i, ready, done)
            await ready.all_arrived.wait()
            gateway = cpu_seconds(gateway_pid) if gateway_pid else 0.0
            cpu, own, started = cpu_seconds(pid), time.process_time(), time.perf_counter()
            ready.open.set()
            await done.all_arrived.wait()
            usage.wall_s = time.perf_counter() - started
            usage.server_cpu_s = cpu_seconds(pid) - cpu
            usage.client_cpu_s = time.process_time() - own
            usage.gateway_cpu_s = cpu_seconds(gateway_pid) - gateway if gateway_pid else 0.0
            done.open.set()
    return usage


@dataclass
class Load:
    """Many clients making the same cheap call as fast as each one's answers come back."""

    label: str
    calls: int
    latencies_ms: list[float]
    usage: Usage

    @property
    def rate(self) -> float:
        return self.calls / self.usage.wall_s


async def load(target: Target, *, clients: int, calls: int, warmup: int, mode: str, timeout: float) -> Load:
    samples: list[list[float]] = [[] for _ in range(clients)]

    async def worker(i: int, ready: Gate, done: Gate) -> None:
        async with connect(target.proc.url, target.token(i), mode) as client:

            def call() -> Awaitable[CallToolResult]:
                return client.call_tool(target.tool, target.arguments)

            for _ in range(warmup):
                target.check(await call())
            await ready.pass_through()
            for _ in range(calls):
                target.check(await timed(call, samples[i]))
            await done.pass_through()

    usage = await together(clients, worker, target.proc.pid, timeout)
    return Load(target.label, clients * calls, [s for per in samples for s in per], usage)


@dataclass
class Mix:
    rounds: int
    generate_ms: list[float]
    poll_ms: list[float]
    usage: Usage

    @property
    def rate(self) -> float:
        return self.rounds / self.usage.wall_s


async def generate_round(client: Client, prompt: str, generate_ms: list[float], poll_ms: list[float]) -> None:
    """generate_image, then poll_task(wait_seconds=10) until the task has succeeded (at most MAX_POLLS polls)."""
    image: dict[str, object] = {"model": "flux-schnell", "prompt": prompt}
    task_id = check_created(await timed(partial(client.call_tool, "generate_image", image), generate_ms))
    poll: dict[str, object] = {"task_id": task_id, "wait_seconds": 10}
    for _ in range(MAX_POLLS):
        if check_polled(await timed(partial(client.call_tool, "poll_task", poll), poll_ms)) == "succeeded":
            return
    raise BenchError(f"task {task_id} had not succeeded after {MAX_POLLS} polls")


async def mix(target: Target, gateway: Proc, *, clients: int, rounds: int, mode: str, timeout: float) -> Mix:
    """Each client: one unmeasured round (the model catalogue is fetched and cached on the first generate), then
    `rounds` measured ones, all clients at the same time."""
    generate_ms: list[float] = []
    poll_ms: list[float] = []

    async def worker(i: int, ready: Gate, done: Gate) -> None:
        async with connect(target.proc.url, target.token(i), mode) as client:
            await generate_round(client, f"bench warm-up {i}", [], [])
            await ready.pass_through()
            for r in range(rounds):
                await generate_round(client, f"bench {i}.{r}", generate_ms, poll_ms)
            await done.pass_through()

    usage = await together(clients, worker, target.proc.pid, timeout, gateway.pid)
    return Mix(clients * rounds, generate_ms, poll_ms, usage)


@dataclass
class Memory:
    label: str
    mode: str
    sessions: int
    protocol: str = ""
    rss0_kib: int = 0
    rss_open_kib: int = 0
    rss_closed_kib: int = 0
    sockets0: int = 0
    sockets_open: int = 0
    connect_s: float = 0.0

    @property
    def per_session_kib(self) -> float:
        return (self.rss_open_kib - self.rss0_kib) / self.sessions


async def session_memory(target: Target, *, sessions: int, mode: str, timeout: float) -> Memory:
    """RSS with no session open, with `sessions` idle ones open, and once they have closed again.

    Before the first figure, every principal connects, calls once and leaves, one at a time: a principal's
    budget and task registry are made on its first call and kept, and they are not a session's cost. One at a
    time, so that the memory those sessions free (and later ones reuse) is at most one session's worth.
    """
    pid, url = target.proc.pid, target.proc.url
    memory = Memory(target.label, mode, sessions)
    limiter = anyio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def warm(i: int) -> None:
        async with connect(url, target.token(i), mode) as client:
            target.check(await client.call_tool(target.tool, target.arguments))
            memory.protocol = client.protocol_version

    opened, release = Gate(sessions), anyio.Event()

    async def hold(i: int) -> None:
        async with AsyncExitStack() as stack:
            async with limiter:
                await stack.enter_async_context(connect(url, target.token(i), mode))
            opened.arrive()
            await release.wait()

    with anyio.fail_after(timeout):
        for i in range(len(target.tokens)):  # one at a time: what they free is at most one session's worth
            await warm(i)
        await anyio.sleep(SETTLE_SECONDS)
        memory.rss0_kib, memory.sockets0 = rss_kib(pid), open_sockets(pid)
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for i in range(sessions):
                group.start_soon(hold, i)
            await opened.all_arrived.wait()
            memory.connect_s = time.perf_counter() - started
            await anyio.sleep(SETTLE_SECONDS)
            memory.rss_open_kib, memory.sockets_open = rss_kib(pid), open_sockets(pid)
            release.set()
        await anyio.sleep(SETTLE_SECONDS)
        memory.rss_closed_kib = rss_kib(pid)
    return memory


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Options:
    clients: int
    calls: int
    warmup: int
    repeats: int
    rounds: int
    sessions: int
    mode: str
    timeout: float
    commit: str


@dataclass
class Results:
    loads: dict[str, list[Load]] = field(default_factory=dict)
    mix: Mix | None = None
    memory: list[Memory] = field(default_factory=list)
    protocol: str = ""


async def run(procs: Processes, opts: Options, state_dir: Path) -> Results:
    key = "sk-bench-" + secrets.token_hex(8)
    tokens = {f"client{i}": f"bench-{i}-" + secrets.token_hex(12) for i in range(50)}
    sandbox = await start_sandbox(procs, key).wait_ready(seconds=READY_TIMEOUT)

    async def started(label: str) -> Target:
        """A fresh server process, ready for clients, and what to call on it."""
        if label == OURS:
            proc = await start_ours(procs, sandbox, key, tokens, state_dir).wait_ready(seconds=READY_TIMEOUT)
            return Target(OURS, proc, "budget_status", {}, check_budget, list(tokens.values()))
        proc = await start_echo(procs).wait_ready("/mcp", None, READY_TIMEOUT)  # any answer: it has no health route
        return Target(ECHO, proc, "echo", {"text": "bench"}, check_echo, [None] * len(tokens))

    results = Results()
    targets = (await started(ECHO), await started(OURS))
    async with connect(targets[1].proc.url, targets[1].token(0), opts.mode) as probe:
        results.protocol = probe.protocol_version
    for repeat in range(opts.repeats):  # alternated, so drift in machine load hits both alike
        for target in targets:
            measured = await load(
                target, clients=opts.clients, calls=opts.calls, warmup=opts.warmup, mode=opts.mode, timeout=opts.timeout
            )
            results.loads.setdefault(target.label, []).append(measured)
            print(f"load {repeat + 1}/{opts.repeats} {target.label}: {measured.rate:.0f} calls/s", file=sys.stderr)
    results.mix = await mix(
        targets[1], sandbox, clients=opts.clients, rounds=opts.rounds, mode=opts.mode, timeout=opts.timeout
    )
    print(f"mix: {results.mix.rate:.1f} rounds/s", file=sys.stderr)
    for target in targets:
        procs.stop(target.proc)

    for mode in MODES:  # fresh servers: memory freed by earlier phases would hide what sessions take
        for label in (ECHO, OURS):
            target = await started(label)
            memory = await session_memory(target, sessions=opts.sessions, mode=mode, timeout=opts.timeout)
            results.memory.append(memory)
            print(f"memory {mode} {label}: {memory.per_session_kib:.1f} KiB/session", file=sys.stderr)
            procs.stop(target.proc)
    return results


@dataclass(frozen=True)
class LoadSummary:
    """A server's load runs: latencies pooled over the repeats, calls/s the median of the repeats' rates, CPU in
    ms per call."""

    rate: float
    rates: list[float]
    latency: Percentiles
    server_cpu_ms: float
    client_cpu_ms: float
    server_busy: float  # server CPU seconds per second of wall time

    @classmethod
    def of(cls, runs: list[Load]) -> LoadSummary:
        calls = sum(run.calls for run in runs)
        server_cpu = sum(run.usage.server_cpu_s for run in runs)
        return cls(
            rate=statistics.median(run.rate for run in runs),
            rates=[run.rate for run in runs],
            latency=Percentiles.of([s for run in runs for s in run.latencies_ms]),
            server_cpu_ms=server_cpu * 1000 / calls,
            client_cpu_ms=sum(run.usage.client_cpu_s for run in runs) * 1000 / calls,
            server_busy=server_cpu / sum(run.usage.wall_s for run in runs),
        )

    def as_json(self) -> dict[str, object]:
        p = self.latency
        return {
            "calls_per_s": round(self.rate, 1),
            "calls_per_s_each": [round(r, 1) for r in self.rates],
            "p50_ms": round(p.p50, 2),
            "p90_ms": round(p.p90, 2),
            "p99_ms": round(p.p99, 2),
            "server_cpu_ms_per_call": round(self.server_cpu_ms, 3),
            "client_cpu_ms_per_call": round(self.client_cpu_ms, 3),
            "server_cpu_share": round(self.server_busy, 2),
        }


def summarize(opts: Options, results: Results) -> dict[str, object]:
    loads = {label: LoadSummary.of(runs) for label, runs in results.loads.items()}
    ours, echo = loads[OURS], loads[ECHO]
    throughput_ratio = ours.rate / echo.rate
    capacity_ratio = echo.server_cpu_ms / ours.server_cpu_ms
    tail_ratio = ours.latency.p99 / ours.latency.p50
    assert results.mix is not None
    m = results.mix
    gen, poll = Percentiles.of(m.generate_ms), Percentiles.of(m.poll_ms)
    memory = {f"{x.label}/{x.mode}": _memory_figures(x) for x in results.memory}
    ours_kib = max(x.per_session_kib for x in results.memory if x.label == OURS)
    return {
        "clients": opts.clients,
        "calls": opts.calls,
        "warmup": opts.warmup,
        "repeats": opts.repeats,
        "rounds": opts.rounds,
        "sessions": opts.sessions,
        "mode": opts.mode,
        "protocol": results.protocol,
        "commit": opts.commit,
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "cpus": os.cpu_count(),
        "max_sessions_default": DEFAULT_MAX_SESSIONS,
        "load": {label: summary.as_json() for label, summary in loads.items()},
        "throughput_ratio": round(throughput_ratio, 3),
        "throughput_target": THROUGHPUT_TARGET,
        "throughput_ok": throughput_ratio >= THROUGHPUT_TARGET,
        "capacity_ratio": round(capacity_ratio, 3),
        "capacity_ok": capacity_ratio >= THROUGHPUT_TARGET,
        "tail_ratio": round(tail_ratio, 2),
        "tail_target": TAIL_TARGET,
        "tail_ok": tail_ratio < TAIL_TARGET,
        "echo_tail_ratio": round(echo.latency.p99 / echo.latency.p50, 2),
        "mix": {
            "rounds": m.rounds,
            "rounds_per_s": round(m.rate, 2),
            "polls": len(m.poll_ms),
            "generate_p50_ms": round(gen.p50, 2),
            "generate_p99_ms": round(gen.p99, 2),
            "poll_p50_ms": round(poll.p50, 2),
            "poll_p99_ms": round(poll.p99, 2),
            "server_cpu_ms_per_round": round(m.usage.server_cpu_s * 1000 / m.rounds, 2),
            "sandbox_cpu_ms_per_round": round(m.usage.gateway_cpu_s * 1000 / m.rounds, 2),
            "client_cpu_ms_per_round": round(m.usage.client_cpu_s * 1000 / m.rounds, 2),
            "server_cpu_share": round(m.usage.server_cpu_s / m.usage.wall_s, 2),
            "sandbox_cpu_share": round(m.usage.gateway_cpu_s / m.usage.wall_s, 2),
        },
        "memory": memory,
        "session_kib_ours_max": round(ours_kib, 1),
        "session_target_kib": SESSION_TARGET_KIB,
        "session_ok": ours_kib <= SESSION_TARGET_KIB,
    }


def _memory_figures(m: Memory) -> dict[str, object]:
    return {
        "protocol": m.protocol,
        "sessions": m.sessions,
        "rss0_kib": m.rss0_kib,
        "rss_open_kib": m.rss_open_kib,
        "rss_closed_kib": m.rss_closed_kib,
        "kib_per_session": round(m.per_session_kib, 1),
        "sockets0": m.sockets0,
        "sockets_open": m.sockets_open,
        "connect_s": round(m.connect_s, 2),
    }


def report(figures: dict[str, object]) -> None:
    """The tables for people, then the same figures as one JSON line for notes."""
    f: dict[str, Any] = figures
    verdict = {True: "OK", False: "MISSED"}
    print(
        f"\napikey-mcp hosted (Streamable HTTP) bench: {f['clients']} clients x {f['calls']} calls after "
        f"{f['warmup']} warm-up, {f['repeats']} repeats; {f['rounds']} generate rounds; {f['sessions']} idle "
        f"sessions; client mode {f['mode']} (protocol {f['protocol']}); commit {f['commit']}, python {f['python']}, "
        f"mcp {f['mcp']}, {f['cpus']} CPUs\n"
    )
    head = f"{'load':<22}{'calls/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'srv CPU ms':>12}{'cli CPU ms':>12}"
    print(f"{head}{'srv busy':>10}")
    for label, row in f["load"].items():
        print(
            f"{label:<22}{row['calls_per_s']:>9.0f}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['server_cpu_ms_per_call']:>12.3f}{row['client_cpu_ms_per_call']:>12.3f}"
            f"{row['server_cpu_share']:>10.0%}"
        )
    print("(CPU figures: ms of CPU per call, server process and this client process; srv busy: server CPU / wall)")
    print(
        f"\nours / echo calls/s = {f['throughput_ratio']:.3f}   target >= {THROUGHPUT_TARGET}   "
        f"{verdict[f['throughput_ok']]}"
    )
    print(
        f"echo / ours server CPU per call = {f['capacity_ratio']:.3f}   (the calls/s ratio if the server, not this "
        f"client, were the bottleneck: {verdict[f['capacity_ok']]} against {THROUGHPUT_TARGET})"
    )
    print(
        f"ours p99 / p50      = {f['tail_ratio']:.2f}    target < {TAIL_TARGET}     {verdict[f['tail_ok']]}"
        f"   (echo: {f['echo_tail_ratio']:.2f})"
    )
    m = f["mix"]
    print(
        f"\nmix (generate_image + poll_task until succeeded): {m['rounds']} rounds, {m['polls']} polls, "
        f"{m['rounds_per_s']:.2f} rounds/s"
    )
    print(
        f"CPU per round: server {m['server_cpu_ms_per_round']:.1f} ms ({m['server_cpu_share']:.0%} busy), sandbox "
        f"{m['sandbox_cpu_ms_per_round']:.1f} ms ({m['sandbox_cpu_share']:.0%} busy), "
        f"clients {m['client_cpu_ms_per_round']:.1f} ms"
    )
    print(f"{'':<22}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'generate_image':<22}{m['generate_p50_ms']:>9.1f}{m['generate_p99_ms']:>9.1f}")
    print(f"{'poll_task':<22}{m['poll_p50_ms']:>9.1f}{m['poll_p99_ms']:>9.1f}")
    head = f"{'memory':<26}{'protocol':>11}{'RSS0 KiB':>10}{'RSS_M KiB':>11}{'closed':>9}{'KiB/sess':>10}"
    print(f"\n{head}{'sockets':>10}")
    for label, row in f["memory"].items():
        sockets = f"{row['sockets0']}->{row['sockets_open']}"
        print(
            f"{label:<26}{row['protocol']:>11}{row['rss0_kib']:>10}{row['rss_open_kib']:>11}"
            f"{row['rss_closed_kib']:>9}{row['kib_per_session']:>10.1f}{sockets:>10}"
        )
    print(
        f"\nours KiB per open session (worst mode) = {f['session_kib_ours_max']:.1f}   target <= "
        f"{SESSION_TARGET_KIB:.0f}   {verdict[f['session_ok']]}   (SDK max_sessions default "
        f"{f['max_sessions_default']})\n"
    )
    print(json.dumps(figures, separators=(",", ":")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients, 1-50 (default 50)")
    parser.add_argument("--calls", type=int, default=40, help="measured calls per client (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured calls per client first (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="load runs per server, alternated (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="generate+poll rounds per client (default 3)")
    parser.add_argument("--sessions", type=int, default=200, help="idle sessions for the memory figure (200)")
    parser.add_argument("--mode", default="auto", choices=MODES, help="how load and mix clients connect")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any one phase may take (300)")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 50 or args.calls < 2 or args.warmup < 0 or args.repeats < 1 or args.rounds < 1:
        parser.error("need 1 <= --clients <= 50, --calls >= 2, --warmup >= 0, --repeats >= 1, --rounds >= 1")
    if not 1 <= args.sessions < DEFAULT_MAX_SESSIONS:
        parser.error(f"--sessions must be under the SDK's default max_sessions ({DEFAULT_MAX_SESSIONS})")
    private_data_home()  # the servers' data: never the user's real ledger
    raise_fd_limit(4 * args.sessions + 1024)
    opts = Options(
        clients=args.clients,
        calls=args.calls,
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        sessions=args.sessions,
        mode=args.mode,
        timeout=args.timeout,
        commit=source_version(),
    )
    with tempfile.TemporaryDirectory(prefix="http-bench-") as state_dir, Processes() as procs:
        results = anyio.run(run, procs, opts, Path(state_dir), backend="asyncio")
    figures = summarize(opts, results)
    if (after := source_version()) != opts.commit:
        print(f"warning: the source changed during the run ({opts.commit} -> {after})", file=sys.stderr)
        figures["commit"] = f"{opts.commit}->{after}"
    report(figures)


if __name__ == "__main__":
    main()
