"""Prometheus metrics after a flow of paid calls, over stdio (a subprocess with --metrics-port) and hosted (HTTP):
every metric name is present, and the credit metrics per principal equal the ledger's in the same run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from apikey_mcp import metrics
from apikey_mcp.alerts import count_alert
from apikey_mcp.budget import Totals
from apikey_mcp.sandbox import SandboxServer
from tests.conftest import free_port
from tests.hosted.conftest import ALICE, BOB
from tests.server.conftest import call, call_error

from .conftest import NAMES, by_principal, ledger_totals, scrape, stdio_params


@pytest.fixture
def collected() -> Iterator[metrics.Metrics]:
    """Metrics on in this process (the hosted server runs here), served on a port of their own."""
    made = metrics.Metrics(max_principals=100)
    metrics.install(made)
    made.serve("127.0.0.1", 0)
    yield made
    metrics.install(None)
    made.close()


def url_of(made: metrics.Metrics) -> str:
    return f"http://127.0.0.1:{made._server.server_port}/metrics"


@pytest.mark.slow
async def test_stdio_metrics_name_everything_and_equal_the_ledger(
    sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    state, port = tmp_path / "state.sqlite3", free_port()
    params = stdio_params(sandbox_server, state, "--metrics-port", str(port), "--principal", "carol", "--budget", "100")
    async with Client(params) as client:
        created = await call(client, "generate_image", prompt="a fox", model="flux-schnell")
        with anyio.fail_after(20):
            await call(client, "poll_task", task_id=created["task_id"], wait_seconds=20)
        await call(client, "chat_completion", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        await call_error(client, "generate_video", prompt="long", model="seedance-2", duration=10)
        await call_error(client, "generate_image", prompt="x", model="no-such-model")
        seen = await scrape(f"http://127.0.0.1:{port}/metrics")
        ledger = await ledger_totals(state)
    assert NAMES <= set(seen), NAMES - set(seen)
    assert by_principal(seen["apikey_credits_spent"]) == {"carol": ledger["carol"].spent} and ledger["carol"].spent > 0
    assert by_principal(seen["apikey_budget_credits"]) == {"carol": 100}
    assert by_principal(seen["apikey_credits_reserved"]) == {"carol": 0}
    outcomes = {(labels["tool"], labels["outcome"]): value for labels, value in seen["apikey_tool_calls"]}
    assert outcomes[("generate_image", "ok")] == 1 and outcomes[("chat_completion", "ok")] == 1
    assert outcomes[("generate_video", "refused_budget")] == 1
    assert outcomes[("generate_image", "refused_input")] == 1
    routes = {labels["route"] for labels, _ in seen["apikey_gateway_request_seconds"]}
    assert "/v1/tasks/{id}" in routes and not any(created["task_id"] in r for r in routes)  # templates, not paths
    assert dict((labels["state"], v) for labels, v in seen["apikey_tasks"]) == {"succeeded": 1}
    assert any(labels.get("modality") == "image" for labels, _ in seen["apikey_task_duration_seconds"])
    assert seen["apikey_gateway_polls"][0][1] >= 1


async def test_hosted_metrics_name_everything_and_equal_the_ledger_per_principal(
    hosted_factory, collected: metrics.Metrics, tmp_path: Path
) -> None:
    hosted = hosted_factory()
    async with hosted.connect("streamable-http", ALICE) as alice, hosted.connect("sse", BOB) as bob:
        made = await call(alice, "generate_image", prompt="a fox", model="flux-schnell")
        await call(bob, "chat_completion", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        with anyio.fail_after(20):
            await call(alice, "poll_task", task_id=made["task_id"], wait_seconds=20)
    async with httpx2.AsyncClient() as http:  # a wrong token: an authentication failure
        assert (
            await http.post(f"{hosted.url}/mcp", headers={"Authorization": "Bearer wrong-token-123456"})
        ).status_code == 401
        assert (await http.get(f"{hosted.url}/metrics")).status_code == 404  # never on the MCP port
    seen = await scrape(url_of(collected))
    ledger = await ledger_totals(hosted.settings.state_file)
    assert NAMES <= set(seen), NAMES - set(seen)
    assert by_principal(seen["apikey_credits_spent"]) == {name: t.spent for name, t in ledger.items()}
    assert by_principal(seen["apikey_budget_credits"]) == {name: t.budget for name, t in ledger.items()}
    assert ledger["alice"].spent > 0 and ledger["bob"].spent > 0
    assert sum(v for _, v in seen["apikey_auth_failures"]) == 1
    assert sum(v for labels, v in seen["apikey_callbacks"] if labels["result"] == "ok") >= 1  # the sandbox's callback


async def test_principal_labels_are_bounded_and_the_rest_summed_under_other(
    hosted_factory, collected: metrics.Metrics
) -> None:
    collected.max_principals = 1
    hosted = hosted_factory()
    async with hosted.connect("streamable-http", ALICE) as alice, hosted.connect("streamable-http", BOB) as bob:
        await call(alice, "chat_completion", model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
        await call(bob, "budget_status")
    seen = await scrape(url_of(collected))
    ledger = await ledger_totals(hosted.settings.state_file)
    assert set(by_principal(seen["apikey_credits_spent"])) == {"alice", "_other"}  # the biggest spender is named
    assert by_principal(seen["apikey_budget_credits"])["_other"] == ledger["bob"].budget


def test_bound_keeps_the_biggest_spenders_and_sums_the_rest() -> None:
    rows = [("a", Totals(10, 1, 0)), ("b", Totals(20, 9, 1)), ("c", Totals(30, 5, 2))]
    assert metrics.bound(rows, 2) == [("b", Totals(20, 9, 1)), ("c", Totals(30, 5, 2)), ("_other", Totals(10, 1, 0))]
    assert metrics.bound(rows, 5) == sorted(rows, key=lambda r: -r[1].spent)


def test_calls_are_no_ops_when_metrics_are_off() -> None:
    metrics.install(None)
    metrics.background_error("supervisor")  # nothing to count into, nothing raised
    metrics.tool_call("x", "ok")
    with metrics.ledger_op("reserve"):
        pass
    assert metrics.active() is None


def test_each_alert_sent_is_counted_by_its_threshold() -> None:
    collected = metrics.Metrics(10)
    metrics.install(collected)
    try:
        for threshold in (80, 100, 80):
            count_alert(threshold)
    finally:
        metrics.install(None)
    sample = collected.registry.get_sample_value
    assert sample("apikey_budget_alerts_total", {"threshold": "80"}) == 2
    assert sample("apikey_budget_alerts_total", {"threshold": "100"}) == 1
