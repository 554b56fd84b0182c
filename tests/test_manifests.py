"""The client and registry manifests are valid for their formats and match what the server offers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from apikey_mcp import __version__
from apikey_mcp.cli import parser
from apikey_mcp.config import Settings
from apikey_mcp.server import build_server
from tests.node import node_package

MANIFESTS = Path(__file__).parent.parent / "manifests"


def load(name: str) -> dict:
    return json.loads((MANIFESTS / name).read_text())


async def test_mcpb_manifest_lists_exactly_the_servers_tools_and_prompts() -> None:
    manifest = load("manifest.json")
    server = build_server(Settings())
    assert {t["name"] for t in manifest["tools"]} == {t.name for t in await server.list_tools()}
    assert {p["name"] for p in manifest["prompts"]} <= {p.name for p in await server.list_prompts()}
    assert manifest["version"] == __version__
    assert (MANIFESTS / manifest["server"]["entry_point"]).is_file()
    assert manifest["user_config"]["api_key"]["sensitive"] is True


def test_mcpb_manifest_passes_the_official_validator() -> None:
    mcpb = node_package("@anthropic-ai/mcpb/dist/cli/cli.js")
    result = subprocess.run(
        ["node", str(mcpb), "validate", str(MANIFESTS / "manifest.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "validation passes" in result.stdout, result.stdout + result.stderr


def test_registry_server_json_keeps_the_registry_rules() -> None:
    server = load("server.json")
    assert server["$schema"].endswith("/server.schema.json")
    assert re.fullmatch(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+", server["name"])
    assert 1 <= len(server["description"]) <= 100
    assert server["version"] == __version__
    (package,) = server["packages"]
    assert {"registryType", "identifier", "version", "transport"} <= set(package)
    assert package["version"] == __version__ and package["transport"] == {"type": "stdio"}
    assert package["identifier"] == "apikey-mcp"  # the distribution name in pyproject.toml
    env = {v["name"]: v for v in package["environmentVariables"]}
    assert env["APIKEY_API_KEY"]["isSecret"] is True
    assert set(env) <= {f"APIKEY_{name.upper()}" for name in Settings.model_fields}


def test_claude_desktop_config_starts_servers_our_cli_understands() -> None:
    config = load("claude_desktop_config.json")
    for entry in config["mcpServers"].values():
        assert entry["command"] == "uvx" and entry["args"][0] == "apikey-mcp"
        parser().parse_args(entry["args"][1:])
        assert set(entry.get("env", {})) <= {f"APIKEY_{name.upper()}" for name in Settings.model_fields}
