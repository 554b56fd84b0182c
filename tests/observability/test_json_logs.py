"""`--log-format json`: every stderr line is one JSON object, a paid call's lines carry its principal, tool,
reservation and task, and configuration errors come as JSON too."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from apikey_mcp.sandbox import SandboxServer
from tests.server.conftest import call, settings_for, stdio_env

pytestmark = pytest.mark.slow  # server processes


def _lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text.strip(), "the server logged nothing"
    return [json.loads(line) for line in text.splitlines()]  # every line parses, or this fails


async def test_every_line_is_json_and_a_paid_calls_lines_carry_principal_and_task(
    sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    errors = tmp_path / "stderr.jsonl"
    server = [
        sys.executable,
        "-m",
        "apikey_mcp",
        "--log-format",
        "json",
        "--principal",
        "dana",
        "--state-file",
        str(tmp_path / "state.sqlite3"),
    ]
    env = stdio_env(settings_for(sandbox_server, poll_interval=0.05))
    params = StdioServerParameters(
        command="sh", args=["-c", f"exec {shlex.join(server)} 2>{shlex.quote(str(errors))}"], env=env
    )
    async with Client(params) as client:
        created = await call(client, "generate_image", prompt="a fox", model="flux-schnell")
        with anyio.fail_after(20):
            await call(client, "poll_task", task_id=created["task_id"], wait_seconds=20)
    lines = _lines(errors)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(str(line["time"]).endswith("Z") for line in lines)
    task_lines = [line for line in lines if created["task_id"] in str(line["message"])]
    assert len(task_lines) >= 2  # created, then settled (by the watcher, which carries the call's fields)
    for line in task_lines:
        assert line["principal"] == "dana" and line["task_id"] == created["task_id"], line
        assert line["reservation_id"] and line["tool"] == "generate_image", line


def test_configuration_errors_are_json_lines_too(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(tmp_path), "APIKEY_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-m", "apikey_mcp", "--budget=-5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines and lines[0]["level"] == "ERROR" and "APIKEY_SESSION_BUDGET" in str(lines[0]["message"])
    unknown = subprocess.run(
        [sys.executable, "-m", "apikey_mcp", "--log-format", "json", "--no-such-flag"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode == 2 and "--no-such-flag" in json.loads(unknown.stderr)["message"]
