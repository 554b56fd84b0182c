"""The official MCP Inspector CLI, a third-party client, against the stdio server on the sandbox.

It is installed beforehand in tests/hosted/node (`npm ci --prefix tests/hosted/node`, done by .ci/run), and
npm runs offline here, so nothing is downloaded during the tests. Each call is one Inspector run with its
own server, started as a client would start it: `npx -y @modelcontextprotocol/inspector --cli <command>`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.node import NODE_DIR, node_package

pytestmark = pytest.mark.slow  # the MCP Inspector CLI (node) starts our server


def inspector(*method: str, env_sandbox: bool = False) -> tuple[dict[str, Any], str]:
    """`npx -y @modelcontextprotocol/inspector --cli <our server> --sandbox <method...>`: its JSON and stderr.

    With `env_sandbox`, the sandbox is switched on by APIKEY_SANDBOX=true instead, as the Desktop Extension does.
    """
    options, server = (["-e", "APIKEY_SANDBOX=true"], []) if env_sandbox else ([], ["--sandbox"])
    options += ["-e", f"XDG_DATA_HOME={os.environ['XDG_DATA_HOME']}"]  # the inspector passes only what it is given
    node_package("@modelcontextprotocol/inspector/package.json")  # skips without Node.js, fails if not installed
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")} | {"npm_config_offline": "true"}
    done = subprocess.run(
        [
            "npx",
            "-y",
            "@modelcontextprotocol/inspector",
            "--cli",
            *options,
            sys.executable,
            "-m",
            "apikey_mcp",
            *server,
            *method,
        ],
        cwd=NODE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout), done.stderr


def test_the_inspector_lists_our_tools_and_finds_them_portable() -> None:
    listed, stderr = inspector("--method", "tools/list", "--strict")
    names = {tool["name"] for tool in listed["tools"]}
    assert {"estimate", "generate_video", "poll_task", "budget_status"} <= names and len(names) == 10
    assert "Warning: tool" not in stderr and "Traceback" not in stderr


def test_the_inspector_estimates_for_free_and_a_paid_call_reports_its_cost() -> None:
    estimate, _ = inspector(
        "--method", "tools/call", "--tool-name", "estimate", "--tool-arg", "model=seedance-2-fast", "duration=5"
    )
    started, _ = inspector(
        "--method",
        "tools/call",
        "--tool-name",
        "generate_image",
        "--tool-arg",
        "prompt=a red fox",
        "model=flux-schnell",
    )
    assert not estimate["isError"] and estimate["structuredContent"]["credits"] > 0
    assert estimate["structuredContent"]["budget"] == {"budget": 1000, "spent": 0, "reserved": 0, "remaining": 1000}
    task = started["structuredContent"]
    assert not started["isError"] and task["task_id"] and task["credits_reserved"] > 0
    cost = {"credits_reserved": task["credits_reserved"], "budget": task["budget"]}
    assert started["_meta"]["org.api-key/cost"] == cost


def test_the_inspector_reads_a_resource_from_a_server_switched_to_the_sandbox_by_its_environment() -> None:
    read, stderr = inspector("--method", "resources/read", "--uri", "apikey://models", env_sandbox=True)
    (content,) = read["contents"]
    models = json.loads(content["text"])["data"]
    assert content["mimeType"] == "application/json" and "seedance-2-fast" in {m["id"] for m in models}
    assert "using the SANDBOX gateway" in stderr
