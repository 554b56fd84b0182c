"""Hosted, the spending policy is the operator's: `admin set-policy` changes it live for a running server, the
refusals name that command, and a principal's client approving every confirmation never passes the budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.types import ElicitResult

from apikey_mcp.sandbox import Sandbox
from tests.hosted.conftest import ALICE
from tests.server.conftest import call, call_error

VIDEO = {"prompt": "x", "model": "seedance-2-fast"}  # 40 credits


def admin(state_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "apikey_mcp", "admin", "--state-file", str(state_file), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def test_confirmation_hosted_protects_the_principal_and_never_raises_the_operators_limit(
    hosted_factory, sandbox: Sandbox, transport: str
) -> None:
    asked: list[str] = []

    async def approve_everything(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    hosted = hosted_factory(session_budget=100, confirm_above=30)
    async with hosted.connect(transport, ALICE, elicitation_callback=approve_everything) as client:
        made = [await client.call_tool("generate_video", VIDEO) for _ in range(3)]
    assert [r.is_error for r in made] == [False, False, True] and len(sandbox.tasks) == 2
    assert "Over budget" in made[2].content[0].text
    assert asked[:2] == [
        "Generate a video with seedance-2-fast for 40 credits? 60 left",
        "Generate a video with seedance-2-fast for 40 credits? 20 left",
    ]


@pytest.mark.slow
async def test_the_operator_changes_a_running_servers_policy_and_the_refusal_names_the_command(
    hosted_factory, sandbox: Sandbox
) -> None:
    hosted = hosted_factory(session_budget=1000)
    async with hosted.connect("streamable-http", ALICE) as client:
        before = await call(client, "budget_status")  # alice now exists in the ledger
        flags = ["--max-per-call", "30", "--period", "month", "--allow", "video,image"]
        changed = await anyio.to_thread.run_sync(
            lambda: admin(hosted.settings.state_file, "set-policy", "alice", *flags)
        )
        text = await call_error(client, "generate_video", **VIDEO)
        refused_model = await call_error(client, "chat_completion", model="gpt-4o-mini", prompt="hi")
        after = await call(client, "budget_status")
    listed = await anyio.to_thread.run_sync(lambda: admin(hosted.settings.state_file, "principals"))
    assert before["period"] == "none" and "resets_at" not in before and changed.returncode == 0, changed.stderr
    assert "at most 30 per call" in text and "apikey-mcp admin set-policy alice" in text and sandbox.tasks == {}
    assert "allows only image, video" in refused_model and "apikey-mcp admin set-policy alice" in refused_model
    assert after["policy"] == {"max_per_call": 30, "allow": ["image", "video"]} and after["period"] == "month"
    assert after["resets_at"].endswith("-01T00:00:00Z") and after["reserved"] == 0
    assert "alice      1000    0      0         1000       30            image,video  month" in listed.stdout
