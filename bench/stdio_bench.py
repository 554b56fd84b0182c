"""How much apikey-mcp adds over stdio, against a direct gateway call and a bare MCPServer.

One run starts the sandbox gateway as its own process, creates one long-lived image task, and then measures:

* direct: `GatewayClient.get_task` from this process (the gateway round trip alone);
* poll_task: the same poll through `python -m apikey_mcp` over stdio (round trip + MCP + our server);
* echo: a bare MCPServer's trivial tool over stdio (the SDK's and the pipe's share);
* bare get: a bare MCPServer whose one tool makes the same gateway GET (get_server.py), over stdio;
* poll_task (fresh): the same poll with the default `fresh_seconds`, answered from the registry when it knows;
* waiting: 3 s tasks created and waited on with poll_task over stdio, by this code and by a baseline (today's main
  by default, run from its own source in the same run): how long after the task's end the answer comes, and how
  many gateway GETs each task cost;
* cold start: spawn -> initialize -> tools/list for apikey-mcp, apikey-mcp --sandbox and the bare server.

Targets: poll_task p50 <= 1.1 x bare get p50 (poll_task making the same GET: `APIKEY_FRESH_SECONDS=0`); a waiting
poll_task answers within 500 ms p50 of a 3 s task's end, with no more GETs per task than the baseline; apikey-mcp
--sandbox cold start <= 1.15 x the bare server's.
Run: `python bench/stdio_bench.py` (see bench/README.md). The last line printed is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # tests/harness.py: the process harness the tests use too

from apikey_mcp.gateway import GatewayClient  # noqa: E402
from apikey_mcp.gateway.models import ImageRequest, Task  # noqa: E402
from tests.harness import Percentiles, Processes, ServerProcess, clean_env, private_data_home  # noqa: E402

ECHO_SERVER = BENCH / "echo_server.py"
GET_SERVER = BENCH / "get_server.py"
TARGET = 1.2  # the older, looser ratios, still printed
POLL_TARGET = 1.1  # poll_task (same GET) / bare get tool
COLD_TARGET = 1.15  # apikey-mcp --sandbox / bare server
WAIT_TASK_SECONDS = 3.0
WAIT_LAG_TARGET_MS = 500.0
TASK_GETS = "GET /v1/tasks/{task_id}"
LIVE = frozenset({"pending", "running"})  # a long sandbox task is pending for its first fifth, then running
HEALTH_TIMEOUT = 30.0
DATA = tempfile.mkdtemp(prefix="apikey-bench-data-")  # the servers' XDG_DATA_HOME: never the user's real ledger
_T = TypeVar("_T")


class BenchError(RuntimeError):
    """A measured call did not do what it should: the figures would mean nothing."""


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


def apikey_server(url: str, key: str, *, source: Path | None = None, **extra: str) -> StdioServerParameters:
    """`python -m apikey_mcp` against the sandbox; WARNING keeps per-call logging out of the figures.

    `source`: run that copy of the package (a baseline) instead of the installed one; `extra`: more APIKEY_*
    settings, e.g. FRESH_SECONDS="0".
    """
    env = clean_env(APIKEY_BASE_URL=url, APIKEY_API_KEY=key, APIKEY_LOG_LEVEL="WARNING")
    env |= {f"APIKEY_{name}": value for name, value in extra.items()}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    return StdioServerParameters(command=sys.executable, args=["-m", "apikey_mcp"], env=env)


def sandboxed_server() -> StdioServerParameters:
    """`python -m apikey_mcp --sandbox`: the in-process sandbox, as someone trying it out starts it."""
    env = clean_env(APIKEY_LOG_LEVEL="WARNING")
    return StdioServerParameters(command=sys.executable, args=["-m", "apikey_mcp", "--sandbox"], env=env)


def get_server(url: str, key: str) -> StdioServerParameters:
    """get_server.py: the same GET as poll_task from a bare MCPServer tool, against the same sandbox."""
    env = clean_env(APIKEY_BASE_URL=url, APIKEY_API_KEY=key)
    return StdioServerParameters(command=sys.executable, args=[str(GET_SERVER)], env=env)


def echo_server() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(ECHO_SERVER)], env=clean_env())


async def over_stdio(
    params: StdioServerParameters,
    tool: str,
    arguments: dict[str, object],
    check: Callable[[CallToolResult], None],
    *,
    n: int,
    warmup: int,
) -> tuple[list[float], str]:
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


async def cold_starts(url: str, key: str, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Alternate the servers so drift in machine load hits all alike; one unmeasured round warms caches."""
    apikey_ms: list[float] = []
    sandboxed_ms: list[float] = []
    echo_ms: list[float] = []
    for i in range(runs + 1):
        a = await cold_start(apikey_server(url, key), "poll_task")
        s = await cold_start(sandboxed_server(), "poll_task")
        e = await cold_start(echo_server(), "echo")
        if i > 0:
            apikey_ms.append(a * 1000)
            sandboxed_ms.append(s * 1000)
            echo_ms.append(e * 1000)
    return apikey_ms, sandboxed_ms, echo_ms


def build_times(runs: int = 5) -> tuple[float, float]:
    """Median ms to build apikey-mcp's server (every tool, resource and prompt, with their schemas) and a bare
    MCPServer with one tool, in this process: the share of a cold start that is ours beyond imports."""
    from mcp.server import MCPServer

    from apikey_mcp.config import Settings
    from apikey_mcp.server import build_server

    settings = Settings(api_key="sk-bench-build")
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        build_server(settings)
        ours.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        MCPServer("echo").tool()(_echo)
        bare.append((time.perf_counter() - started) * 1000)
    return statistics.median(ours[1:]), statistics.median(bare[1:])


def _echo(text: str) -> str:
    """Return the text unchanged."""
    return text


# ---------------------------------------------------------------- waiting for a task's end


@dataclass
class Waiting:
    """`poll_task` waiting on 3 s tasks: lag from each task's end to the answer, gateway GETs per task."""

    label: str
    lags_ms: list[float]
    gets: int
    tasks: int

    @property
    def gets_per_task(self) -> float:
        return self.gets / self.tasks


async def task_gets(url: str, key: str) -> int:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        response = await http.get(f"{url}/sandbox/stats")
        response.raise_for_status()
        return int(response.json()["requests"].get(TASK_GETS, 0))


async def ended_at(url: str, key: str, task_ids: list[str]) -> dict[str, float]:
    """When each task ended, to the microsecond (the sandbox's /sandbox/tasks/{id}, which is not a poll)."""
    ends: dict[str, float] = {}
    async with httpx2.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        for task_id in task_ids:
            response = await http.get(f"/sandbox/tasks/{task_id}")
            response.raise_for_status()
            if (end := response.json().get("ended_at")) is None:
                raise BenchError(f"the sandbox has no end time for {task_id}")
            ends[task_id] = float(end)
    return ends


async def waiting(
    label: str, params: StdioServerParameters, url: str, key: str, *, tasks: int, concurrency: int
) -> Waiting:
    """Create `tasks` image tasks through the server (`concurrency` at a time, staggered) and wait on each with
    poll_task(wait_seconds=20) until it ends; the lag is from the end the sandbox recorded to poll_task's answer
    (both on this machine's wall clock)."""
    answered: dict[str, float] = {}
    limiter = anyio.CapacityLimiter(concurrency)
    async with Client(params) as client:
        await client.list_tools()
        check_created(await client.call_tool("generate_image", {"model": "flux-schnell", "prompt": "warm-up"}))
        before = await task_gets(url, key)

        async def one(i: int) -> None:
            await anyio.sleep(0.37 * (i % concurrency))  # staggered, so that the ends do not coincide
            async with limiter:
                result = await client.call_tool("generate_image", {"model": "flux-schnell", "prompt": f"wait {i}"})
                task_id = check_created(result)
                for _ in range(5):
                    polled = await client.call_tool("poll_task", {"task_id": task_id, "wait_seconds": 20})
                    if check_waited(polled) == "succeeded":
                        answered[task_id] = time.time()
                        return
                raise BenchError(f"task {task_id} had not succeeded after five waits of 20 s")

        async with anyio.create_task_group() as group:
            for i in range(tasks):
                group.start_soon(one, i)
        gets = await task_gets(url, key) - before
    ends = await ended_at(url, key, list(answered))
    return Waiting(label, [(answered[t] - ends[t]) * 1000 for t in answered], gets, tasks)


def check_created(result: CallToolResult) -> str:
    if result.is_error or not result.structured_content:
        raise BenchError(f"generate_image failed: {_text(result)}")
    return str(result.structured_content["task_id"])


def check_waited(result: CallToolResult) -> str:
    status = str((result.structured_content or {}).get("status"))
    if result.is_error or status == "failed":
        raise BenchError(f"poll_task failed: {_text(result)}")
    return status


def baseline_source(ref: str, into: Path) -> Path | None:
    """The package's source at `ref`, exported into `into` (for PYTHONPATH); None if git cannot give it."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=False)
    if archive.returncode != 0:
        print(f"warning: no baseline ({archive.stderr.decode(errors='replace').strip()})", file=sys.stderr)
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def default_baseline() -> str:
    """Today's main: where this branch left it (the merge base), so the figures compare the change alone."""
    done = subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"], capture_output=True, text=True)
    return done.stdout.strip() or "main"


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Options:
    calls: int
    warmup: int
    cold_runs: int
    wait_tasks: int
    wait_concurrency: int
    baseline: str
    commit: str


@dataclass
class Series:
    direct: list[float]
    poll: list[float]
    fresh: list[float]
    echo: list[float]
    get: list[float]
    cold_apikey: list[float]
    cold_sandboxed: list[float]
    cold_echo: list[float]
    waits: list[Waiting]
    build_ms: tuple[float, float] = (0.0, 0.0)


async def run(sandbox: ServerProcess, wait_sandbox: ServerProcess, key: str, opts: Options) -> dict[str, object]:
    for proc in (sandbox, wait_sandbox):
        await proc.wait_ready(seconds=HEALTH_TIMEOUT)
    url, wait_url = sandbox.url, wait_sandbox.url
    async with GatewayClient(url, key) as gateway:
        task = await gateway.generate_image(ImageRequest(model="flux-schnell", prompt="bench"))
        check_task(task)
        direct = await sample(lambda: gateway.get_task(task.task_id), check_task, n=opts.calls, warmup=opts.warmup)
        status = str((await gateway.get_task(task.task_id)).status)
    n, w = opts.calls, opts.warmup
    poll_args: dict[str, object] = {"task_id": task.task_id, "wait_seconds": 0}
    same_get = apikey_server(url, key, FRESH_SECONDS="0")  # every poll asks the gateway, as the bare tool does
    poll, protocol = await over_stdio(same_get, "poll_task", poll_args, check_poll, n=n, warmup=w)
    fresh, _ = await over_stdio(apikey_server(url, key), "poll_task", poll_args, check_poll, n=n, warmup=w)
    echo, _ = await over_stdio(echo_server(), "echo", {"text": "bench"}, check_echo, n=n, warmup=w)
    get_args: dict[str, object] = {"task_id": task.task_id}
    get, _ = await over_stdio(get_server(url, key), "get_task", get_args, check_get, n=n, warmup=w)
    cold_apikey, cold_sandboxed, cold_echo = await cold_starts(url, key, opts.cold_runs)
    waits: list[Waiting] = []
    if opts.wait_tasks:
        with tempfile.TemporaryDirectory(prefix="stdio-bench-baseline-") as tmp:
            servers = [("this code", apikey_server(wait_url, key))]
            if opts.baseline != "none" and (source := baseline_source(opts.baseline, Path(tmp))) is not None:
                servers.insert(0, (f"baseline {opts.baseline[:10]}", apikey_server(wait_url, key, source=source)))
            for label, params in servers:
                waits.append(
                    await waiting(
                        label, params, wait_url, key, tasks=opts.wait_tasks, concurrency=opts.wait_concurrency
                    )
                )
    series = Series(direct, poll, fresh, echo, get, cold_apikey, cold_sandboxed, cold_echo, waits, build_times())
    return summarize(opts, status, protocol, series)


def summarize(opts: Options, status: str, protocol: str, s: Series) -> dict[str, object]:
    d, p, e, g = Percentiles.of(s.direct), Percentiles.of(s.poll), Percentiles.of(s.echo), Percentiles.of(s.get)
    f = Percentiles.of(s.fresh)
    ca, cs, ce = statistics.median(s.cold_apikey), statistics.median(s.cold_sandboxed), statistics.median(s.cold_echo)
    poll_ratio = p.p50 / (d.p50 + e.p50)
    get_ratio = p.p50 / g.p50
    cold_ratio, sandboxed_ratio = ca / ce, cs / ce
    figures: dict[str, object] = {
        "calls": opts.calls,
        "warmup": opts.warmup,
        "cold_runs": opts.cold_runs,
        "task_status": status,
        "commit": opts.commit,
        "protocol": protocol,
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "direct_ms": _rounded(d),
        "poll_task_ms": _rounded(p),
        "poll_task_fresh_ms": _rounded(f),
        "echo_ms": _rounded(e),
        "bare_get_ms": _rounded(g),
        "poll_ratio": round(poll_ratio, 3),
        "poll_target": TARGET,
        "poll_ok": poll_ratio <= TARGET,
        "get_ratio": round(get_ratio, 3),
        "get_target": POLL_TARGET,
        "get_ok": get_ratio <= POLL_TARGET,
        "fresh_ratio": round(f.p50 / g.p50, 3),
        "cold_apikey_ms": round(ca, 1),
        "cold_sandboxed_ms": round(cs, 1),
        "cold_echo_ms": round(ce, 1),
        "cold_apikey_min_ms": round(min(s.cold_apikey), 1),
        "cold_sandboxed_min_ms": round(min(s.cold_sandboxed), 1),
        "cold_echo_min_ms": round(min(s.cold_echo), 1),
        "build_server_ms": round(s.build_ms[0], 1),
        "build_bare_ms": round(s.build_ms[1], 2),
        "cold_ratio": round(cold_ratio, 3),
        "cold_target": TARGET,
        "cold_ok": cold_ratio <= TARGET,
        "cold_sandboxed_ratio": round(sandboxed_ratio, 3),
        "cold_sandboxed_target": COLD_TARGET,
        "cold_sandboxed_ok": sandboxed_ratio <= COLD_TARGET,
        "waiting": [
            {
                "label": w.label,
                "tasks": w.tasks,
                "lag_p50_ms": round(statistics.median(w.lags_ms), 1),
                "lag_max_ms": round(max(w.lags_ms), 1),
                "gets_per_task": round(w.gets_per_task, 2),
            }
            for w in s.waits
        ],
    }
    if s.waits:
        ours = s.waits[-1]
        lag = statistics.median(ours.lags_ms)
        figures["wait_lag_ok"] = lag <= WAIT_LAG_TARGET_MS
        if len(s.waits) > 1:
            figures["wait_gets_ok"] = ours.gets_per_task <= s.waits[0].gets_per_task
    return figures


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
        ("direct get_task", "direct_ms"),
        ("MCP poll_task", "poll_task_ms"),
        ("MCP echo (bare)", "echo_ms"),
        ("MCP get_task (bare)", "bare_get_ms"),
    )
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
        f"target <= {POLL_TARGET}   {verdict[bool(f['get_ok'])]}   (same GET: APIKEY_FRESH_SECONDS=0)"
    )
    print(
        f"poll_task (fresh) p50 / bare get p50     = {f['fresh_ratio']:.3f}   (default fresh_seconds: answered from "
        f"the registry when its state is under 1 s old)"
    )
    print(f"\n{'cold start (ms)':<26}{'median':>9}{'min':>9}")
    print(f"{'apikey-mcp':<26}{f['cold_apikey_ms']:>9.1f}{f['cold_apikey_min_ms']:>9.1f}")
    print(f"{'apikey-mcp --sandbox':<26}{f['cold_sandboxed_ms']:>9.1f}{f['cold_sandboxed_min_ms']:>9.1f}")
    print(f"{'bare echo server':<26}{f['cold_echo_ms']:>9.1f}{f['cold_echo_min_ms']:>9.1f}")
    print(
        f"(in process: build_server {f['build_server_ms']:.1f} ms, a bare MCPServer with one tool "
        f"{f['build_bare_ms']:.2f} ms)"
    )
    print(f"\napikey / echo cold start = {f['cold_ratio']:.3f}   target <= {TARGET}   {verdict[bool(f['cold_ok'])]}")
    print(
        f"apikey --sandbox / echo  = {f['cold_sandboxed_ratio']:.3f}   target <= {COLD_TARGET}   "
        f"{verdict[bool(f['cold_sandboxed_ok'])]}"
    )
    if f["waiting"]:
        print(f"\n{'waiting on 3 s tasks':<30}{'tasks':>7}{'lag p50 ms':>12}{'lag max ms':>12}{'GETs/task':>11}")
        for w in f["waiting"]:
            print(
                f"{w['label']:<30}{w['tasks']:>7}{w['lag_p50_ms']:>12.1f}{w['lag_max_ms']:>12.1f}"
                f"{w['gets_per_task']:>11.2f}"
            )
        print(f"this code: lag p50 <= {WAIT_LAG_TARGET_MS:.0f} ms   {verdict[bool(f['wait_lag_ok'])]}", end="")
        if "wait_gets_ok" in f:
            print(f";  GETs per task <= baseline   {verdict[bool(f['wait_gets_ok'])]}", end="")
        print()
    print(f"\nload average (1 min) at the end: {f['load_avg_1m']} on {f['cpus']} CPUs\n")
    print(json.dumps(figures, separators=(",", ":")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300, help="measured calls per latency series (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured calls before each series (default 30)")
    parser.add_argument("--cold-runs", type=int, default=10, help="cold starts of each server (default 10)")
    parser.add_argument(
        "--wait-tasks", type=int, default=10, help="3 s tasks waited on per server (default 10; 0: skip)"
    )
    parser.add_argument("--wait-concurrency", type=int, default=5, help="of them at a time (default 5)")
    parser.add_argument(
        "--baseline",
        default=None,
        help="git ref run beside this code in the waiting phase (default: the merge base with main; 'none': skip)",
    )
    args = parser.parse_args(argv)
    if args.calls < 2 or args.cold_runs < 1 or args.warmup < 0 or args.wait_tasks < 0 or args.wait_concurrency < 1:
        parser.error("need --calls >= 2, --cold-runs >= 1, --warmup >= 0, --wait-tasks >= 0, --wait-concurrency >= 1")
    private_data_home()  # the servers' data: never the user's real ledger
    opts = Options(
        calls=args.calls,
        warmup=args.warmup,
        cold_runs=args.cold_runs,
        wait_tasks=args.wait_tasks,
        wait_concurrency=args.wait_concurrency,
        baseline=args.baseline or default_baseline(),
        commit=source_version(),
    )
    key = "sk-bench-" + secrets.token_hex(8)
    with Processes() as procs:
        # By default tasks last 100000 s, so every poll of them is a real GET of a live task.
        sandbox = procs.sandbox([key], task_seconds=100000, credits=100000000)
        wait_sandbox = procs.sandbox(
            [key], name="sandbox (3 s tasks)", task_seconds=WAIT_TASK_SECONDS, credits=100000000
        )
        figures = anyio.run(run, sandbox, wait_sandbox, key, opts, backend="asyncio")
    if (after := source_version()) != opts.commit:
        print(f"warning: the source changed during the run ({opts.commit} -> {after})", file=sys.stderr)
        figures["commit"] = f"{opts.commit}->{after}"
    report(figures)


if __name__ == "__main__":
    main()
