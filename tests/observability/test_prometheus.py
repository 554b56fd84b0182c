"""A real Prometheus scrapes a running stdio server (--metrics-port) and a hosted one, and a PromQL query through
its HTTP API returns each principal's spend equal to the ledger's. The alert rules in deploy/ pass promtool."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from apikey_mcp import metrics
from apikey_mcp.sandbox import SandboxServer
from tests.conftest import free_port, wait_until
from tests.hosted.conftest import ALICE, BOB
from tests.server.conftest import call

from .conftest import ledger_totals, stdio_params

DEPLOY = Path(__file__).parents[2] / "deploy"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """Prometheus scraping the metrics ports in the returned list (filled before it starts) every second."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("no prometheus: apt-get install prometheus")
    ports = [free_port(), free_port()]
    targets = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: apikey-mcp\n"
        f"    static_configs: [{{targets: [{targets}]}}]\n"
    )
    web = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{web}", ports
    finally:
        process.terminate()
        process.wait(timeout=30)


async def promql(base: str, query: str) -> dict[str, float]:
    """An instant query's values by principal (empty while Prometheus is starting)."""
    try:
        async with httpx2.AsyncClient(timeout=5) as http:
            answer = (await http.get(f"{base}/api/v1/query", params={"query": query})).json()
    except (httpx2.TransportError, ValueError):
        return {}
    return {r["metric"].get("principal", ""): float(r["value"][1]) for r in answer.get("data", {}).get("result", [])}


@pytest.mark.slow
async def test_prometheus_reads_each_principals_spend_equal_to_the_ledger(
    prometheus: tuple[str, list[int]], sandbox_server: SandboxServer, hosted_factory, tmp_path: Path
) -> None:
    base, (stdio_port, hosted_port) = prometheus
    collected = metrics.Metrics()  # the hosted server runs in this process
    metrics.install(collected)
    collected.serve("127.0.0.1", hosted_port)
    try:
        hosted = hosted_factory()
        state = tmp_path / "stdio.sqlite3"
        params = stdio_params(sandbox_server, state, "--metrics-port", str(stdio_port), "--principal", "carol")
        async with Client(params) as carol:
            async with hosted.connect("streamable-http", ALICE) as alice, hosted.connect("sse", BOB) as bob:
                image = await call(alice, "generate_image", prompt="a fox", model="flux-schnell")
                await call(bob, "chat_completion", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                await call(carol, "chat_completion", model="gpt-4o-mini", messages=[{"role": "user", "content": "yo"}])
                with anyio.fail_after(20):
                    await call(alice, "poll_task", task_id=image["task_id"], wait_seconds=20)
            ledger = {n: t.spent for n, t in (await ledger_totals(hosted.settings.state_file)).items()}
            ledger |= {n: t.spent for n, t in (await ledger_totals(state)).items()}
            assert set(ledger) == {"alice", "bob", "carol"} and all(ledger.values())
            query = "max by (principal) (apikey_credits_spent_total)"

            async def agrees() -> bool:
                return await promql(base, query) == {name: float(spent) for name, spent in ledger.items()}

            await wait_until(agrees, seconds=90)  # Prometheus starts, then scrapes every second
    finally:
        metrics.install(None)
        collected.close()


@pytest.mark.slow
def test_the_alert_rules_and_scrape_config_in_deploy_pass_promtool() -> None:
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if promtool is None:
        pytest.skip("no promtool")
    rules = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "apikey-alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rules.returncode == 0 and "4 rules found" in rules.stdout, rules.stdout + rules.stderr
    config = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert config.returncode == 0, config.stdout + config.stderr
