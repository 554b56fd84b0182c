"""How much apikey-mcp adds over stdio, against a direct gateway call and a bare MCPServer.

One run starts the sandbox gateway as its own process, creates one long-lived image task, and then measures:

* direct: `GatewayClient.get_task` from this process (the gateway round trip alone);
* poll_task: the same poll through `python -m apikey_mcp` over stdio (round trip + MCP + our server);
* echo: a bare MCPServer's trivial tool over stdio (the SDK's and the pipe's share);
* bare get: a bare MCPServer whose one tool makes the same gateway GET (get_server.py), over stdio;
* cold start: spawn -> initialize -> tools/list for apikey-mcp and for the bare server.

Targets: poll_task p50 <= 1.2 x (direct p50 + echo p50), poll_task p50 <= 1.2 x bare get p50, and apikey-mcp
cold start <= 1.2 x the bare server's.
Run: `python bench/stdio_bench.py` (see bench/README.md). The last line printed is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, TypeVar

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import ImageRequest, Task

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ECHO_SERVER = BENCH / "echo_server.py"
GET_SERVER = BENCH / "get_server.py"
TARGET = 1.2
LIVE = frozenset({"pending", "running"})  # a long sandbox task is pending for its first fifth, then running
HEALTH_TIMEOUT = 30.0
_T = TypeVar("_T")


class BenchError(RuntimeError):
    """A measured call did not do what it should: the figures would mean nothing."""


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Percentiles:
        """Inclusive quantiles: with a few hundred samples p99 stays inside the observed range."""
        cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
        return cls(p50=statistics.median(samples_ms), p90=cuts[89], p99=cuts[98])


# ---------------------------------------------------------------- the sandbox gateway, as its own process


def free_port() -> int:
    """A loopback port nobody listens on right now (the sandbox binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sandbox_process(port: int, key: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run `apikey-mcp sandbox` in its own process, so it shares no event loop or GIL with the client measured.

    Tasks last 100000 s, so every poll of them is a real GET of a live task. The process is stopped whatever
    happens; on an error its output is shown, since that is usually where the cause is.
    """
    command = [
        sys.executable, "-m", "apikey_mcp", "sandbox", "--port", str(port), "--key", key,
        "--task-seconds", "100000", "--credits", "100000000",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        except BaseException:
            _show_tail(log)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _show_tail(log: IO[bytes]) -> None:
    log.seek(0)
    tail = log.read()[-3000:].decode(errors="replace")
    print(f"--- sandbox output (tail) ---\n{tail}\n-----------------------------", file=sys.stderr)


async def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until /healthz answers: uvicorn is listening only some time after the process starts."""
    with anyio.fail_after(HEALTH_TIMEOUT):
        async with httpx2.AsyncClient() as http:
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"the sandbox exited with code {proc.returncode} before it was healthy")
                try:
                    if (await http.get(f"{url}/healthz", timeout=1.0)).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                await anyio.sleep(0.05)


# ---------------------------------------------------------------- measuring


async def sample(call: Callable[[], Awaitable[_T]], check: Callable[[_T], None], *, n: int, warmup: int) -> list[float]:
    """Per-call latency in ms of n sequential calls after `warmup` unmeasured ones; each answer is checked
    outside the timed span, so a call that failed fast cannot pass for a fast call."""
    for _ in range(warmup):
        check(await call())
    samples: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        result = await call()
        samples.append((time.perf_counter() - started) * 1000)
        check(result)
    return samples


def check_task(task: Task) -> None:
    if task.status not in LIVE:
        raise BenchError(f"task {task.task_id} is {task.status}, not live: polls would not reach the gateway")


def check_poll(result: CallToolResult) -> None:
    if result.is_error:
        raise BenchError(f"poll_task failed: {_text(result)}")
    status = (result.structured_content or {}).get("status")
    if status not in LIVE:
        raise BenchError(f"poll_task says {status!r}, not live: {_text(result)}")


def check_get(result: CallToolResult) -> None:
    if result.is_error or _text(result) not in LIVE:
        raise BenchError(f"the bare get_task tool answered {_text(result)!r}, not a live status")


def check_echo(result: CallToolResult) -> None:
    if result.is_error or _text(result) != "bench":
        raise BenchError(f"echo answered {_text(result)!r}")


def _text(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


def apikey_server(url: str, key: str) -> StdioServerParameters:
    """`python -m apikey_mcp` against the sandbox; WARNING keeps per-call logging out of the figures."""
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""),
        "APIKEY_BASE_URL": url, "APIKEY_API_KEY": key, "APIKEY_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    return StdioServerParameters(command=sys.executable, args=["-m", "apikey_mcp"], env=env)


def get_server(url: str, key: str) -> StdioServerParameters:
    """get_server.py: the same GET as poll_task from a bare MCPServer tool, against the same sandbox."""
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""),
        "APIKEY_BASE_URL": url, "APIKEY_API_KEY": key,
    }  # fmt: skip
    return StdioServerParameters(command=sys.executable, args=[str(GET_SERVER)], env=env)


def echo_server() -> StdioServerParameters:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}
    return StdioServerParameters(command=sys.executable, args=[str(ECHO_SERVER)], env=env)


async def over_stdio(
    params: StdioServerParameters, tool: str, arguments: dict[str, object], check: Callable[[CallToolResult], None],
    *, n: int, warmup: int,
) -> tuple[list[float], str]:  # fmt: skip
    """Latencies of one tool called n times in one long-lived stdio session, and the protocol it negotiated."""
    async with Client(params) as client:
        await client.list_tools()
        samples = await sample(lambda: client.call_tool(tool, arguments), check, n=n, warmup=warmup)
        return samples, client.protocol_version


async def cold_start(params: StdioServerParameters, expected_tool: str) -> float:
    """Seconds from entering the client (spawn + handshake) until tools/list has answered; shutdown not counted."""
    started = time.perf_counter()
    async with Client(params) as client:
        tools = await client.list_tools()
        elapsed = time.perf_counter() - started
    if expected_tool not in {t.name for t in tools.tools}:
        raise BenchError(f"{params.args} lists no {expected_tool!r} tool")
    return elapsed


async def cold_starts(url: str, key: str, runs: int) -> tuple[list[float], list[float]]:
    """Alternate the two servers so drift in machine load hits both alike; one unmeasured round warms caches."""
    apikey_ms: list[float] = []
    echo_ms: list[float] = []
    for i in range(runs + 1):
        a = await cold_start(apikey_server(url, key), "poll_task")
        e = await cold_start(echo_server(), "echo")
        if i > 0:
            apikey_ms.append(a * 1000)
            echo_ms.append(e * 1000)
    return apikey_ms, echo_ms


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Options:
    calls: int
    warmup: int
    cold_runs: int
    commit: str


async def run(url: str, key: str, proc: subprocess.Popen[bytes], opts: Options) -> dict[str, object]:
    await wait_healthy(url, proc)
    async with GatewayClient(url, key) as gateway:
        task = await gateway.generate_image(ImageRequest(model="flux-schnell", prompt="bench"))
        check_task(task)
        direct = await sample(lambda: gateway.get_task(task.task_id), check_task, n=opts.calls, warmup=opts.warmup)
        status = str((await gateway.get_task(task.task_id)).status)
    poll_args: dict[str, object] = {"task_id": task.task_id, "wait_seconds": 0}
    poll, protocol = await over_stdio(
        apikey_server(url, key), "poll_task", poll_args, check_poll, n=opts.calls, warmup=opts.warmup
    )
    echo, _ = await over_stdio(echo_server(), "echo", {"text": "bench"}, check_echo, n=opts.calls, warmup=opts.warmup)
    get_args: dict[str, object] = {"task_id": task.task_id}
    get, _ = await over_stdio(get_server(url, key), "get_task", get_args, check_get, n=opts.calls, warmup=opts.warmup)
    cold_apikey, cold_echo = await cold_starts(url, key, opts.cold_runs)
    return summarize(opts, status, protocol, direct, poll, echo, get, cold_apikey, cold_echo)


def summarize(
    opts: Options, status: str, protocol: str, direct: list[float], poll: list[float], echo: list[float],
    get: list[float], cold_apikey: list[float], cold_echo: list[float],
) -> dict[str, object]:  # fmt: skip
    d, p, e, g = Percentiles.of(direct), Percentiles.of(poll), Percentiles.of(echo), Percentiles.of(get)
    ca, ce = statistics.median(cold_apikey), statistics.median(cold_echo)
    poll_ratio = p.p50 / (d.p50 + e.p50)
    get_ratio = p.p50 / g.p50
    cold_ratio = ca / ce
    return {
        "calls": opts.calls, "warmup": opts.warmup, "cold_runs": opts.cold_runs, "task_status": status,
        "commit": opts.commit, "protocol": protocol, "python": platform.python_version(), "mcp": version("mcp"),
        "direct_ms": _rounded(d), "poll_task_ms": _rounded(p), "echo_ms": _rounded(e), "bare_get_ms": _rounded(g),
        "poll_ratio": round(poll_ratio, 3), "poll_target": TARGET, "poll_ok": poll_ratio <= TARGET,
        "get_ratio": round(get_ratio, 3), "get_target": TARGET, "get_ok": get_ratio <= TARGET,
        "cold_apikey_ms": round(ca, 1), "cold_echo_ms": round(ce, 1),
        "cold_apikey_min_ms": round(min(cold_apikey), 1), "cold_echo_min_ms": round(min(cold_echo), 1),
        "cold_ratio": round(cold_ratio, 3), "cold_target": TARGET, "cold_ok": cold_ratio <= TARGET,
    }  # fmt: skip


def source_version() -> str:
    """The commit measured, `-dirty` if edited: the code moves between runs, and a figure must say which it is."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def _rounded(p: Percentiles) -> dict[str, float]:
    return {"p50": round(p.p50, 3), "p90": round(p.p90, 3), "p99": round(p.p99, 3)}


def report(figures: dict[str, object]) -> None:
    """The table for people, then the same figures as one JSON line for notes."""
    f = figures
    verdict = {True: "OK", False: "MISSED"}
    print(
        f"\napikey-mcp stdio bench: {f['calls']} calls per series after {f['warmup']} warm-up, "
        f"{f['cold_runs']} cold starts each; commit {f['commit']}, python {f['python']}, mcp {f['mcp']}, "
        f"protocol {f['protocol']}, task status {f['task_status']}\n"
    )
    print(f"{'per call (ms)':<26}{'p50':>9}{'p90':>9}{'p99':>9}")
    rows = (
        ("direct get_task", "direct_ms"), ("MCP poll_task", "poll_task_ms"), ("MCP echo (bare)", "echo_ms"),
        ("MCP get_task (bare)", "bare_get_ms"),
    )  # fmt: skip
    for label, key in rows:
        row = f[key]
        assert isinstance(row, dict)
        print(f"{label:<26}{row['p50']:>9.3f}{row['p90']:>9.3f}{row['p99']:>9.3f}")
    print(
        f"\npoll_task p50 / (direct p50 + echo p50) = {f['poll_ratio']:.3f}   "
        f"target <= {TARGET}   {verdict[bool(f['poll_ok'])]}"
    )
    print(
        f"poll_task p50 / bare get_task tool p50   = {f['get_ratio']:.3f}   "
        f"target <= {TARGET}   {verdict[bool(f['get_ok'])]}"
    )
    print(f"\n{'cold start (ms)':<26}{'median':>9}{'min':>9}")
    print(f"{'apikey-mcp':<26}{f['cold_apikey_ms']:>9.1f}{f['cold_apikey_min_ms']:>9.1f}")
    print(f"{'bare echo server':<26}{f['cold_echo_ms']:>9.1f}{f['cold_echo_min_ms']:>9.1f}")
    print(f"\napikey / echo cold start = {f['cold_ratio']:.3f}   target <= {TARGET}   {verdict[bool(f['cold_ok'])]}\n")
    print(json.dumps(figures, separators=(",", ":")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300, help="measured calls per latency series (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured calls before each series (default 30)")
    parser.add_argument("--cold-runs", type=int, default=10, help="cold starts of each server (default 10)")
    args = parser.parse_args(argv)
    if args.calls < 2 or args.cold_runs < 1 or args.warmup < 0:
        parser.error("need --calls >= 2, --cold-runs >= 1 and --warmup >= 0")
    opts = Options(calls=args.calls, warmup=args.warmup, cold_runs=args.cold_runs, commit=source_version())
    port, key = free_port(), "sk-bench-" + secrets.token_hex(8)
    url = f"http://127.0.0.1:{port}"
    with sandbox_process(port, key) as proc:
        figures = anyio.run(run, url, key, proc, opts, backend="asyncio")
    if (after := source_version()) != opts.commit:
        print(f"warning: the source changed during the run ({opts.commit} -> {after})", file=sys.stderr)
        figures["commit"] = f"{opts.commit}->{after}"
    report(figures)


if __name__ == "__main__":
    main()
