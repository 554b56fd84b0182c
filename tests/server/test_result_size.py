"""What a call costs the agent's context does not grow with open work: every result stays under 2 KB."""

from __future__ import annotations

import json

from mcp.types import CallToolResult

from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.server.conftest import connect, settings_for


def size(result: CallToolResult) -> int:
    assert not result.is_error
    return len(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":")))


async def test_results_stay_small_with_many_reservations_open(sandbox_server: SandboxServer, held: Sandbox) -> None:
    # 40 held tasks: the watchers poll at the default pace, not the suite's fast one (800 polls a second)
    settings = settings_for(sandbox_server, session_budget=100_000, poll_interval=1.0, max_poll_interval=5.0)
    async with connect("memory", settings) as client:
        created = [
            await client.call_tool("generate_image", {"prompt": f"p{i}", "model": "flux-schnell"}) for i in range(40)
        ]
        status = await client.call_tool("budget_status", {})
        page = await client.call_tool("budget_status", {"limit": 5, "offset": 35})
    assert max(size(r) for r in created) < 2048 and size(status) < 2048 and size(page) < 2048
    assert status.structured_content is not None and page.structured_content is not None
    assert status.structured_content["reserved"] == 40 * 2 and len(status.structured_content["open_reservations"]) == 5
    assert len(page.structured_content["open_reservations"]) == 5
