"""A third-party client, the official TypeScript MCP SDK, over Streamable HTTP and SSE."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.hosted.conftest import ALICE, Hosted
from tests.node import NODE_DIR, node_package

pytestmark = pytest.mark.slow  # a node client and a hosted server


@pytest.fixture
def node_client() -> Path:
    """Our client script on the TS SDK as pinned in package-lock.json (installed by .ci/run)."""
    node_package("@modelcontextprotocol/sdk/package.json")
    return NODE_DIR / "client.mjs"


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_the_typescript_sdk_lists_and_calls_tools(hosted: Hosted, node_client: Path, transport: str) -> None:
    result = await anyio.run_process(["node", str(node_client), transport, hosted.url, ALICE], check=False)
    assert result.returncode == 0, result.stderr.decode()
    seen = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert seen["protocol"]["name"] == "apikey-mcp"
    assert "generate_video" in seen["tools"] and len(seen["tools"]) == seen["outputSchemas"] == 10
    assert seen["budget"]["remaining"] == 1000
    assert seen["estimate"]["credits"] == 48 and seen["estimate"]["fits_budget"] is True
    assert seen["badIsError"] is True


async def test_the_typescript_sdk_is_refused_without_a_token(hosted: Hosted, node_client: Path) -> None:
    result = await anyio.run_process(["node", str(node_client), "streamable-http", hosted.url, "wrong"], check=False)
    assert result.returncode != 0 and "401" in result.stderr.decode()
