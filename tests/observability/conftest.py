"""Running servers to observe: a stdio subprocess with its own metrics port and state file, and reading metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx2
from mcp import StdioServerParameters
from prometheus_client.parser import text_string_to_metric_families

from apikey_mcp.budget import Totals
from apikey_mcp.sandbox import SandboxServer
from apikey_mcp.stores import open_store
from tests.hosted.conftest import hosted_factory  # noqa: F401  (a fixture, for the hosted tests here)
from tests.server.conftest import settings_for, stdio_env

# Every metric name the issue asks for, as the exposition names them.
NAMES = {
    "apikey_credits_spent", "apikey_credits_reserved", "apikey_budget_credits", "apikey_tool_calls",
    "apikey_gateway_request_seconds", "apikey_gateway_polls", "apikey_tasks", "apikey_task_duration_seconds",
    "apikey_callbacks", "apikey_auth_failures", "apikey_limit_refusals", "apikey_background_errors",
    "apikey_ledger_seconds",
}  # fmt: skip


def stdio_params(server: SandboxServer, state_file: Path, *args: str, **settings: Any) -> StdioServerParameters:
    env = stdio_env(settings_for(server, poll_interval=0.05, **settings))
    return StdioServerParameters(
        command=sys.executable, args=["-m", "apikey_mcp", "--state-file", str(state_file), *args], env=env
    )


async def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The metrics at `url`: each family's samples as (labels, value), under the family's name."""
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    response.raise_for_status()
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = [(s.labels, s.value) for s in family.samples if not s.name.endswith("_created")]
    return families


def by_principal(samples: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {labels["principal"]: value for labels, value in samples}


async def ledger_totals(state_file: Path) -> dict[str, Totals]:
    async with open_store(state_file=state_file) as store:
        return dict(await store.principals())
