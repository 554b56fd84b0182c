"""What metrics and JSON logs cost on a tool call, measured in one run against the same sandbox.

Two apikey-mcp stdio servers run side by side against one sandbox gateway (its own process): **plain** (text
logs at INFO, no metrics: the defaults) and **observed** (`--log-format json`, `--metrics-port`, scraped once a
second as Prometheus would). Each server's stderr goes to a file, as a client such as Claude Desktop keeps it.
The same paid tool call (`chat_completion`: estimate, reserve, the gateway's answer, settle, its log lines and
metrics) is made on one then the other, alternating, so that whatever else the machine does falls on both alike.

Over stdio the two are different processes, and on a shared machine their difference is mostly noise; so the
same comparison is also made **in one process** (`build_server` and an in-memory `Client`, against the same
sandbox), switching metrics (the process's `Metrics`, still scraped every second) and the log formatter (text or
JSON, to a file, at INFO) on and off between consecutive calls: the same code, the same moment, only the
observability differs. That is the figure the target applies to.

Calls are paired (one plain, one observed, consecutive, the order alternating), and the ratio reported first is
1 + median(observed - plain) / median(plain): a pair shares the machine's mood, so the difference keeps little
of the noise that the plain ratio of medians carries (also printed).

Target: that paired ratio <= 1.05 (in one process). Run: `python bench/observability_bench.py [--calls 400]`;
the last line printed is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stdio_bench import BenchError, Percentiles, free_port, sandbox_process, wait_healthy

TARGET = 1.05
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
IMAGE = {"model": "flux-schnell", "prompt": "a red fox"}
TOOLS = {"chat_completion": CHAT, "generate_image": IMAGE}  # a chat logs nothing at INFO; an image logs two lines
TASK_SECONDS = 0.2  # the sandbox's tasks end soon, so their settlement is logged and counted during the run


def server(url: str, key: str, data: Path, *args: str) -> StdioServerParameters:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "XDG_DATA_HOME": str(data),
        "APIKEY_BASE_URL": url,
        "APIKEY_API_KEY": key,
        "APIKEY_SESSION_BUDGET": "100000000",
    }
    return StdioServerParameters(command=sys.executable, args=["-m", "apikey_mcp", *args], env=env)


def check(result: CallToolResult) -> None:
    content = result.structured_content or {}
    if result.is_error or (content.get("credits_charged") is None and content.get("task_id") is None):
        raise BenchError(f"the call did not succeed: {result.content}")


async def timed(client: Client, tool: str) -> float:
    started = time.perf_counter()
    result = await client.call_tool(tool, TOOLS[tool])
    elapsed = (time.perf_counter() - started) * 1000
    check(result)
    return elapsed


async def scrape_every_second(url: str, scrapes: list[int]) -> None:
    async with httpx2.AsyncClient(timeout=5) as http:
        while True:
            response = await http.get(url)
            if response.status_code != 200 or "apikey_credits_spent_total" not in response.text:
                raise BenchError(f"the metrics scrape failed: {response.status_code}")
            scrapes[0] += 1
            await anyio.sleep(1.0)


async def run(url: str, key: str, calls: int, warmup: int) -> dict[str, object]:
    metrics_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        plain_err, observed_err = (base / "plain.log").open("w"), (base / "observed.log").open("w")
        plain_params = server(url, key, base / "plain")
        observed_params = server(
            url, key, base / "observed", "--log-format", "json", "--metrics-port", str(metrics_port)
        )
        async with (
            Client(stdio_client(plain_params, errlog=plain_err)) as plain,
            Client(stdio_client(observed_params, errlog=observed_err)) as observed,
            anyio.create_task_group() as group,
        ):
            scrapes = [0]
            group.start_soon(scrape_every_second, f"http://127.0.0.1:{metrics_port}/metrics", scrapes)
            for _ in range(warmup):
                for tool in TOOLS:
                    await timed(plain, tool)
                    await timed(observed, tool)
            samples: dict[tuple[str, str], list[float]] = {(t, w): [] for t in TOOLS for w in ("plain", "observed")}
            for i in range(calls):  # alternate the tools and the servers, and which server goes first
                order = [("plain", plain), ("observed", observed)][:: 1 if i % 2 == 0 else -1]
                for tool in TOOLS:
                    for which, client in order:
                        samples[(tool, which)].append(await timed(client, tool))
            group.cancel_scope.cancel()
        plain_err.close()
        observed_err.close()
        json_lines = (base / "observed.log").read_text().splitlines()
        parsed = sum(1 for line in json_lines if json.loads(line))
        text_lines = len((base / "plain.log").read_text().splitlines())
    figures: dict[str, object] = {
        "calls_each": calls,
        "target": TARGET,
        "scrapes": scrapes[0],
        "log_lines": {"plain_text": text_lines, "observed_json": len(json_lines), "json_parsed": parsed},
    }
    for tool in TOOLS:
        a, b = samples[(tool, "plain")], samples[(tool, "observed")]
        figures[tool] = _ratios(a, b)
    return figures


async def in_process(url: str, key: str, calls: int, warmup: int) -> dict[str, object]:
    """The same server in this process, metrics and JSON logs switched on and off between consecutive calls."""
    import logging

    from apikey_mcp import metrics
    from apikey_mcp.config import Settings
    from apikey_mcp.logs import JsonFormatter
    from apikey_mcp.server import build_server
    from apikey_mcp.stores.sqlite import SqliteLedgerStore

    collected = metrics.Metrics()
    port = collected.serve("127.0.0.1", 0)
    metrics.install(collected)  # on at the start, so that the server's ledger is read at each scrape
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        handler = logging.FileHandler(Path(tmp) / "server.log")
        root = logging.getLogger()
        root.handlers[:] = [handler]
        logging.getLogger("apikey_mcp").setLevel(logging.INFO)
        settings = Settings(base_url=url, api_key=key, session_budget=100_000_000)
        store = SqliteLedgerStore(Path(tmp) / "state.sqlite3")

        def observed(on: bool) -> None:
            metrics.install(collected if on else None)
            handler.setFormatter(JsonFormatter() if on else text)

        samples: dict[tuple[str, str], list[float]] = {(t, w): [] for t in TOOLS for w in ("plain", "observed")}
        async with Client(build_server(settings, store=store)) as client, anyio.create_task_group() as group:
            scrapes = [0]
            group.start_soon(scrape_every_second, f"http://127.0.0.1:{port}/metrics", scrapes)
            for i in range(warmup + calls):
                for tool in TOOLS:
                    for which in ("plain", "observed")[:: 1 if i % 2 == 0 else -1]:
                        observed(which == "observed")
                        elapsed = await timed(client, tool)
                        if i >= warmup:
                            samples[(tool, which)].append(elapsed)
            observed(True)
            group.cancel_scope.cancel()
        await store.aclose()
        handler.close()
    collected.close()
    metrics.install(None)
    figures: dict[str, object] = {"scrapes": scrapes[0]}
    for tool in TOOLS:
        a, b = samples[(tool, "plain")], samples[(tool, "observed")]
        figures[tool] = _ratios(a, b)
    return figures


def instrumentation_us(rounds: int = 20_000) -> dict[str, float]:
    """The observability work of one paid call on its own, in microseconds: the metric updates a chat call makes
    (a tool call, two gateway requests, three ledger operations), and one log line as JSON and as text."""
    import logging

    from apikey_mcp import logs, metrics

    collected = metrics.Metrics()
    metrics.install(collected)
    started = time.perf_counter()
    for _ in range(rounds):
        metrics.tool_call("chat_completion", "ok")
        metrics.gateway_request("/v1/credits/estimate", "200", 0.004)
        metrics.gateway_request("/v1/chat/completions", "200", 0.006)
        for op in ("reserve", "settle", "totals"):
            with metrics.ledger_op(op):
                pass
    per_call_metrics = (time.perf_counter() - started) / rounds * 1e6
    metrics.install(None)
    record = logging.LogRecord(
        "apikey_mcp.service",
        logging.INFO,
        "",
        0,
        "created %s task %s (%d credits reserved)",
        ("image", "task_0123456789abcdef", 2),
        None,
    )
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    with logs.bound(principal="alice", tool="generate_image", task_id="task_0123456789abcdef", reservation_id="r" * 32):
        timings = {}
        for name, formatter in (("json", logs.JsonFormatter()), ("text", text)):
            started = time.perf_counter()
            for _ in range(rounds):
                formatter.format(record)
            timings[name] = (time.perf_counter() - started) / rounds * 1e6
    return {
        "metrics_per_chat_call_us": round(per_call_metrics, 2),
        "json_line_us": round(timings["json"], 2),
        "text_line_us": round(timings["text"], 2),
    }


def _ratios(a: list[float], b: list[float]) -> dict[str, object]:
    """Figures of plain (`a`) and observed (`b`) latencies, index i of each being one consecutive pair."""
    p, o = Percentiles.of(a), Percentiles.of(b)
    paired = 1 + statistics.median(y - x for x, y in zip(a, b, strict=True)) / p.p50
    return {
        "plain_ms": vars(p),
        "observed_ms": vars(o),
        "ratio_paired": round(paired, 3),
        "ratio_p50": round(o.p50 / p.p50, 3),
        "ratio_mean": round(statistics.fmean(b) / statistics.fmean(a), 3),
        "met": paired <= TARGET,
    }


def _show(title: str, figures: dict[str, object]) -> None:
    print(title)
    for tool in TOOLS:
        f = figures[tool]
        assert isinstance(f, dict)
        p, o = f["plain_ms"], f["observed_ms"]
        print(
            f"  {tool}: plain p50 {p['p50']:.2f} ms (p90 {p['p90']:.2f}), observed p50 {o['p50']:.2f} ms "
            f"(p90 {o['p90']:.2f}); ratio paired {f['ratio_paired']} (p50s {f['ratio_p50']}, "
            f"means {f['ratio_mean']}), target <= {TARGET}: "
            f"{'met' if f['met'] else 'NOT met'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="measured calls on each server (default 400)")
    parser.add_argument("--warmup", type=int, default=20)
    opts = parser.parse_args()
    key = "sk-bench-" + secrets.token_hex(8)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with sandbox_process(port, key, task_seconds=TASK_SECONDS) as proc:
        anyio.run(wait_healthy, url, proc)
        alone = instrumentation_us()
        inner = anyio.run(in_process, url, key, opts.calls, opts.warmup)
        figures = anyio.run(run, url, key, opts.calls, opts.warmup)
    _show(f"in one process, {opts.calls} calls of each tool each way ({inner['scrapes']} scrapes):", inner)
    _show(
        f"over stdio, two servers, {opts.calls} calls each ({figures['scrapes']} scrapes; log lines "
        f"{figures['log_lines']}):",
        figures,
    )
    print(
        f"the instrumentation alone: {alone['metrics_per_chat_call_us']} us of metric updates per chat call; a log "
        f"line formatted as JSON {alone['json_line_us']} us, as text {alone['text_line_us']} us"
    )
    figures = {"instrumentation": alone, "in_process": inner, "stdio": figures}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
