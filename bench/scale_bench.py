"""Costs that must not grow with open work, and waiting that costs no polls: apikey-mcp hosted, with callbacks.

One run starts, each as its own process on loopback ports: a sandbox whose tasks never end (100000 s), a sandbox
whose tasks end after `--task-seconds` (1 s), and apikey-mcp hosted over Streamable HTTP with signed callbacks
wired (`--public-url` + `APIKEY_WEBHOOK_SECRET`) against each; beside the second, the baseline code (today's main by
default, run from its own source) against a sandbox of its own. Then it measures:

* open work: one principal's `budget_status` and `generate_image` p50 and result sizes with 0, 100 and 1,000
  reservations open (tasks that never end); target: at 1,000 open, p50 within 2x of 0 open and every result
  under 2 KB;
* idle: the server's CPU while nobody calls, with no task and then with those 1,000+ open tasks (callbacks on,
  so the watchers only poll as a slow fallback); target: under 2 % of a core;
* callbacks: tasks that end by themselves, each created and waited on with poll_task(wait_seconds=20), by this
  code and by the baseline: gateway GETs per task (sandbox counters) and how soon after the task's end the
  waiting poll_task answered; targets: at most 1 GET per task, and within 50 ms p50 of the end.

Run: `python bench/scale_bench.py` (see bench/README.md). The last line printed is every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx2
from http_bench import Proc, connect, cpu_seconds, structured, text_of
from mcp.types import CallToolResult
from stdio_bench import BenchError, baseline_source, default_baseline, ended_at, source_version

# stdio_bench, imported first, put the repository root on sys.path for tests/harness.py
from tests.harness import Processes, free_port, private_data_home

OPEN_RATIO_TARGET = 2.0  # p50 at the most open / p50 at 0 open, at most
SIZE_TARGET = 2048  # bytes per result, under
IDLE_CPU_TARGET = 0.02  # of one core, under
GETS_TARGET = 1.0  # gateway GETs per task, at most
LAG_TARGET_MS = 50.0  # waiting poll_task after the task's end, p50
TASK_GETS = "GET /v1/tasks/{task_id}"
PRINCIPALS = 8
FIRST_FALLBACK_DUE = 66.0  # s after the first create: 60 s plus the jitter's 10 %


# ---------------------------------------------------------------- processes


def start_sandbox(procs: Processes, name: str, key: str, secret: str, task_seconds: float) -> Proc:
    return procs.sandbox([key], name=name, webhook_secret=secret, task_seconds=task_seconds, credits=1000000000)


def start_hosted(
    procs: Processes,
    name: str,
    sandbox: Proc,
    key: str,
    secret: str,
    tokens: dict[str, str],
    state_dir: Path,
    source: Path | None = None,
) -> Proc:
    """apikey-mcp hosted with callbacks: the sandbox posts each task's end to this server's receiver."""
    port = free_port()
    settings = {
        "APIKEY_BASE_URL": sandbox.url,
        "APIKEY_API_KEY": key,
        "APIKEY_SESSION_BUDGET": "100000000",
        "APIKEY_WEBHOOK_SECRET": secret,
        "APIKEY_MCP_AUTH_TOKENS": ",".join(f"{name}={token}" for name, token in tokens.items()),
    }
    args = [
        "--state-file",
        str(state_dir / f"state-{port}.sqlite3"),
        "--public-url",
        f"http://127.0.0.1:{port}",
        "--log-level",
        "WARNING",
    ]
    return procs.hosted(settings, *args, name=name, port=port, source=source)


async def task_gets(sandbox: Proc, key: str) -> int:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        response = await http.get(f"{sandbox.url}/sandbox/stats")
        response.raise_for_status()
        return int(response.json()["requests"].get(TASK_GETS, 0))


def size_of(result: CallToolResult) -> int:
    """Bytes of the result as it travels: its JSON-RPC result object, structured content and text both."""
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode())


# ---------------------------------------------------------------- open work


@dataclass
class Level:
    open: int
    budget_ms: list[float] = field(default_factory=list)
    generate_ms: list[float] = field(default_factory=list)
    budget_bytes: int = 0
    generate_bytes: int = 0


def created(result: CallToolResult) -> str:
    content = structured(result, "generate_image")
    if content.get("status") not in ("pending", "running"):
        raise BenchError(f"generate_image made a task that is {content.get('status')!r}: {text_of(result)}")
    return str(content["task_id"])


async def open_work(
    server: Proc, token: str, levels: list[int], *, calls: int, creates: int, ramp_clients: int
) -> tuple[list[Level], int, float]:
    """Ramp one principal's open reservations up to each level (several clients at once), then time calls.

    Returns the levels, and how many creates the ramps made in how many seconds (what a burst costs).
    """
    measured: list[Level] = []
    open_now, ramped, ramp_s = 0, 0, 0.0
    async with connect(server.url, token, "auto") as client:
        for _ in range(3):  # warm-up: the catalogue is cached, sessions are made
            structured(await client.call_tool("budget_status", {}), "budget_status")
        for target in levels:
            started = time.perf_counter()
            ramped += max(0, target - open_now)
            open_now = await ramp(server, token, open_now, target, ramp_clients)
            ramp_s += time.perf_counter() - started
            level = Level(open_now)
            for _ in range(calls):
                t = time.perf_counter()
                result = await client.call_tool("budget_status", {})
                level.budget_ms.append((time.perf_counter() - t) * 1000)
                structured(result, "budget_status")
                level.budget_bytes = max(level.budget_bytes, size_of(result))
            for i in range(creates):
                t = time.perf_counter()
                result = await client.call_tool("generate_image", {"model": "flux-schnell", "prompt": f"open {i}"})
                level.generate_ms.append((time.perf_counter() - t) * 1000)
                created(result)
                level.generate_bytes = max(level.generate_bytes, size_of(result))
            open_now += creates
            measured.append(level)
            print(f"open work: {level.open} open measured", file=sys.stderr)
    return measured, ramped, ramp_s


async def ramp(server: Proc, token: str, have: int, want: int, clients: int) -> int:
    if want <= have:
        return have
    left = [want - have]

    async def worker(i: int) -> None:
        async with connect(server.url, token, "auto") as client:
            while left[0] > 0:
                left[0] -= 1
                created(await client.call_tool("generate_image", {"model": "flux-schnell", "prompt": f"ramp {i}"}))

    async with anyio.create_task_group() as group:
        for i in range(clients):
            group.start_soon(worker, i)
    return want


async def idle_cpu(server: Proc, seconds: float) -> float:
    """The server's CPU, in cores, over `seconds` in which nobody calls it."""
    before, started = cpu_seconds(server.pid), time.perf_counter()
    await anyio.sleep(seconds)
    return (cpu_seconds(server.pid) - before) / (time.perf_counter() - started)


# ---------------------------------------------------------------- callbacks


@dataclass
class Waited:
    label: str
    tasks: int
    gets: int
    lags_ms: list[float]  # from the end the sandbox recorded to poll_task's answer

    def add(self, other: Waited) -> None:
        self.tasks, self.gets = self.tasks + other.tasks, self.gets + other.gets
        self.lags_ms += other.lags_ms

    @property
    def gets_per_task(self) -> float:
        return self.gets / self.tasks


async def waited(label: str, server: Proc, sandbox: Proc, key: str, tokens: list[str], *, round_: int) -> Waited:
    """One task per principal, all at once but staggered, each created and waited on with poll_task(wait=20)."""
    answered: dict[str, float] = {}

    async def worker(i: int, token: str) -> None:
        async with connect(server.url, token, "auto") as client:
            structured(await client.call_tool("budget_status", {}), "budget_status")
            await anyio.sleep(0.13 * i)  # staggered: the ends do not coincide
            image = {"model": "flux-schnell", "prompt": f"cb {round_}.{i}"}
            task_id = created(await client.call_tool("generate_image", image))
            for _ in range(5):
                poll = {"task_id": task_id, "wait_seconds": 20}
                status = structured(await client.call_tool("poll_task", poll), "poll_task")["status"]
                if status == "succeeded":
                    answered[task_id] = time.time()
                    return
                if status == "failed":
                    raise BenchError(f"task {task_id} failed")
            raise BenchError(f"task {task_id} had not succeeded after five waits")

    before = await task_gets(sandbox, key)
    async with anyio.create_task_group() as group:
        for i, token in enumerate(tokens):
            group.start_soon(worker, i, token)
    await anyio.sleep(1.0)  # a watcher's last poll after the end, if it makes one, is counted too
    gets = await task_gets(sandbox, key) - before
    ends = await ended_at(sandbox.url, key, list(answered))
    return Waited(label, len(answered), gets, [(answered[t] - ends[t]) * 1000 for t in answered])


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Options:
    levels: list[int]
    calls: int
    creates: int
    ramp_clients: int
    idle_seconds: float
    tasks: int
    task_seconds: float
    baseline: str
    commit: str


async def run(procs: Processes, opts: Options, state_dir: Path, baseline_src: Path | None) -> dict[str, Any]:
    key, secret = "sk-bench-" + secrets.token_hex(8), "whsec_" + secrets.token_hex(16)
    tokens = {f"client{i}": f"bench-{i}-" + secrets.token_hex(12) for i in range(PRINCIPALS)}
    forever = start_sandbox(procs, "sandbox (tasks never end)", key, secret, 100000)
    ours = start_hosted(procs, "apikey-mcp", forever, key, secret, tokens, state_dir)
    # The callbacks phase: each server has a sandbox of its own, so its GETs are counted apart.
    labels = ([f"baseline {opts.baseline[:10]}"] if baseline_src is not None else []) + ["this code"]
    pairs: list[tuple[str, Proc, Proc]] = []
    for label in labels:
        short = start_sandbox(procs, f"sandbox for {label}", key, secret, opts.task_seconds)
        source = baseline_src if label != "this code" else None
        pairs.append((label, start_hosted(procs, label, short, key, secret, tokens, state_dir, source=source), short))
    for proc in (forever, *(short for _, _, short in pairs), ours, *(server for _, server, _ in pairs)):
        await proc.wait_ready(seconds=30)

    figures: dict[str, Any] = {}
    waits = {label: Waited(label, 0, 0, []) for label in labels}
    for r in range(max(1, opts.tasks // PRINCIPALS)):  # alternated rounds: drift in machine load hits all alike
        for label, server, short in pairs if r % 2 == 0 else reversed(pairs):
            waits[label].add(await waited(label, server, short, key, list(tokens.values()), round_=r))
    print("callbacks: done", file=sys.stderr)
    for _, server, _ in pairs:
        procs.stop(server)  # they stay out of the idle figures below

    idle_empty = await idle_cpu(ours, opts.idle_seconds)
    started = time.perf_counter()
    levels, ramped, ramp_s = await open_work(
        ours, tokens["client0"], opts.levels, calls=opts.calls, creates=opts.creates, ramp_clients=opts.ramp_clients
    )
    # The window opens when the first fallback polls of the open tasks come due (60 s +- 10 % after a create):
    # the sweep at its busiest, not the quiet minute before it.
    await anyio.sleep(max(0.0, FIRST_FALLBACK_DUE - (time.perf_counter() - started)))
    gets_before = await task_gets(forever, key)
    idle_open = await idle_cpu(ours, opts.idle_seconds)
    idle_gets = await task_gets(forever, key) - gets_before
    figures["open"] = [
        {
            "open": lv.open,
            "budget_status_p50_ms": round(statistics.median(lv.budget_ms), 2),
            "generate_image_p50_ms": round(statistics.median(lv.generate_ms), 2),
            "budget_status_bytes": lv.budget_bytes,
            "generate_image_bytes": lv.generate_bytes,
        }
        for lv in levels
    ]
    first, last = levels[0], levels[-1]
    figures["ramp_creates"] = ramped
    figures["ramp_s"] = round(ramp_s, 1)
    figures["budget_ratio"] = round(statistics.median(last.budget_ms) / statistics.median(first.budget_ms), 2)
    figures["generate_ratio"] = round(statistics.median(last.generate_ms) / statistics.median(first.generate_ms), 2)
    figures["max_bytes"] = max(max(lv.budget_bytes, lv.generate_bytes) for lv in levels)
    figures["idle"] = {
        "seconds": opts.idle_seconds,
        "cpu_no_tasks": round(idle_empty, 4),
        "open_tasks": last.open + opts.creates,
        "cpu_open_tasks": round(idle_open, 4),
        "gets_in_window": idle_gets,
    }
    figures["callbacks"] = [
        {
            "label": w.label,
            "tasks": w.tasks,
            "gets_per_task": round(w.gets_per_task, 2),
            "lag_p50_ms": round(statistics.median(w.lags_ms), 1),
            "lag_max_ms": round(max(w.lags_ms), 1),
        }
        for w in waits.values()
    ]
    ours_wait = waits["this code"]
    figures["ok"] = {
        "open_budget": figures["budget_ratio"] <= OPEN_RATIO_TARGET,
        "open_generate": figures["generate_ratio"] <= OPEN_RATIO_TARGET,
        "sizes": figures["max_bytes"] < SIZE_TARGET,
        "idle_cpu": idle_open < IDLE_CPU_TARGET,
        "gets_per_task": ours_wait.gets_per_task <= GETS_TARGET,
        "lag": statistics.median(ours_wait.lags_ms) <= LAG_TARGET_MS,
    }
    return figures


def report(opts: Options, figures: dict[str, Any]) -> None:
    f = figures
    ok = {True: "OK", False: "MISSED"}
    print(
        f"\napikey-mcp scale bench (hosted, Streamable HTTP, callbacks wired): commit {f['commit']}, python "
        f"{f['python']}, mcp {f['mcp']}, {f['cpus']} CPUs, load average {f['load_avg_1m']} at the end\n"
    )
    print(f"{'open reservations':<20}{'budget_status p50':>19}{'bytes':>9}{'generate_image p50':>20}{'bytes':>9}")
    for row in f["open"]:
        print(
            f"{row['open']:<20}{row['budget_status_p50_ms']:>16.2f} ms{row['budget_status_bytes']:>9}"
            f"{row['generate_image_p50_ms']:>17.2f} ms{row['generate_image_bytes']:>9}"
        )
    print(f"(ramp: {f['ramp_creates']} creates by {opts.ramp_clients} clients in {f['ramp_s']} s)")
    print(
        f"budget_status p50 at {f['open'][-1]['open']} / at {f['open'][0]['open']} open = {f['budget_ratio']}"
        f"   target <= {OPEN_RATIO_TARGET}   {ok[f['ok']['open_budget']]}"
    )
    print(
        f"generate_image p50 likewise = {f['generate_ratio']}   target <= {OPEN_RATIO_TARGET}   "
        f"{ok[f['ok']['open_generate']]}"
    )
    print(f"largest result = {f['max_bytes']} bytes   target < {SIZE_TARGET}   {ok[f['ok']['sizes']]}")
    idle = f["idle"]
    print(
        f"\nidle CPU over {idle['seconds']} s: {idle['cpu_no_tasks']:.2%} of a core with no task, "
        f"{idle['cpu_open_tasks']:.2%} with {idle['open_tasks']} open tasks ({idle['gets_in_window']} fallback GETs "
        f"in the window)   target < {IDLE_CPU_TARGET:.0%}   {ok[f['ok']['idle_cpu']]}"
    )
    print(
        f"\n{'callbacks, ' + str(opts.task_seconds) + ' s tasks':<30}{'tasks':>7}{'GETs/task':>11}"
        f"{'lag p50 ms':>12}{'lag max ms':>12}"
    )
    for row in f["callbacks"]:
        print(
            f"{row['label']:<30}{row['tasks']:>7}{row['gets_per_task']:>11.2f}{row['lag_p50_ms']:>12.1f}"
            f"{row['lag_max_ms']:>12.1f}"
        )
    print(
        f"this code: GETs per task <= {GETS_TARGET:.0f}   {ok[f['ok']['gets_per_task']]};   waiting poll_task's "
        f"answer after the task's end, p50 <= {LAG_TARGET_MS:.0f} ms   {ok[f['ok']['lag']]}\n"
    )
    print(json.dumps(figures, separators=(",", ":")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--levels", default="0,100,1000", help="open reservations to measure at (0,100,1000)")
    parser.add_argument("--calls", type=int, default=50, help="budget_status calls per level (50)")
    parser.add_argument("--creates", type=int, default=10, help="generate_image calls per level (10)")
    parser.add_argument("--ramp-clients", type=int, default=8, help="clients creating the open work at once (8)")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle CPU window (20 s)")
    parser.add_argument("--tasks", type=int, default=40, help="tasks waited on per server, callbacks phase (40)")
    parser.add_argument("--task-seconds", type=float, default=1.0, help="their length (1 s)")
    parser.add_argument(
        "--baseline",
        default=None,
        help="git ref run beside this code in the callbacks phase (default: the merge base with main; 'none': skip)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the whole run may take (900)")
    args = parser.parse_args(argv)
    levels = sorted({int(x) for x in args.levels.split(",")})
    if levels[0] < 0 or args.calls < 1 or args.creates < 1 or args.tasks < PRINCIPALS:
        parser.error(f"need levels >= 0, --calls >= 1, --creates >= 1 and --tasks >= {PRINCIPALS}")
    private_data_home()  # the servers' data: never the user's real ledger
    opts = Options(
        levels=levels,
        calls=args.calls,
        creates=args.creates,
        ramp_clients=args.ramp_clients,
        idle_seconds=args.idle_seconds,
        tasks=args.tasks,
        task_seconds=args.task_seconds,
        baseline=args.baseline or default_baseline(),
        commit=source_version(),
    )
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp, Processes() as procs:
        source = None if opts.baseline == "none" else baseline_source(opts.baseline, Path(tmp))

        async def bounded() -> dict[str, Any]:
            with anyio.fail_after(args.timeout):
                return await run(procs, opts, Path(tmp), source)

        figures = anyio.run(bounded, backend="asyncio")
    figures |= {
        "commit": opts.commit,
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "options": {k: v for k, v in vars(opts).items() if k != "commit"},
    }
    report(opts, figures)


if __name__ == "__main__":
    main()
