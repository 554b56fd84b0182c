"""The client and registry manifests are valid for their formats and match what the server offers."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest

from apikey_mcp import __version__
from apikey_mcp.cli import parser
from apikey_mcp.config import Settings
from apikey_mcp.server import build_server
from tests.node import node_package

MANIFESTS = Path(__file__).parent.parent / "manifests"


def load(name: str) -> dict:
    return json.loads((MANIFESTS / name).read_text())


SETTINGS_ENV = {f"APIKEY_{name.upper()}" for name in Settings.model_fields}


async def test_mcpb_manifest_lists_exactly_the_servers_tools_and_prompts() -> None:
    manifest = load("manifest.json")
    server = build_server(Settings())
    assert {t["name"] for t in manifest["tools"]} == {t.name for t in await server.list_tools()}
    prompts = {p.name: [a.name for a in p.arguments or []] for p in await server.list_prompts()}
    assert {p["name"]: p["arguments"] for p in manifest["prompts"]} == prompts
    assert manifest["version"] == __version__
    assert (MANIFESTS / manifest["server"]["entry_point"]).is_file()


def test_the_desktop_extension_installs_anywhere_and_can_run_on_the_sandbox_without_a_key() -> None:
    manifest = load("manifest.json")
    server, config = manifest["server"], manifest["user_config"]
    assert manifest["manifest_version"] == "0.4" and server["type"] == "uv"  # uv installs the dependencies
    assert server["mcp_config"]["command"] == "uv" and server["entry_point"] in server["mcp_config"]["args"]
    env = server["mcp_config"]["env"]
    assert set(env) <= SETTINGS_ENV and env["APIKEY_SANDBOX"] == "${user_config.sandbox}"
    assert config["sandbox"]["type"] == "boolean" and config["sandbox"]["default"] is False
    assert config["api_key"]["sensitive"] is True and config["api_key"]["required"] is False
    assert set(manifest["compatibility"]["platforms"]) == {"darwin", "win32", "linux"}


@pytest.mark.slow
def test_mcpb_manifest_passes_the_official_validator() -> None:
    mcpb = node_package("@anthropic-ai/mcpb/dist/cli/cli.js")
    result = subprocess.run(
        ["node", str(mcpb), "validate", str(MANIFESTS / "manifest.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "validation passes" in result.stdout, result.stdout + result.stderr


def test_registry_server_json_is_valid_against_the_official_schema() -> None:
    schema = json.loads((Path(__file__).parent / "data" / "server.schema.json").read_text())
    server = load("server.json")
    assert server["$schema"] == schema["$id"]  # the copy in tests/data is the version server.json names
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    assert [e.message for e in validator.iter_errors(server)] == []
    broken = {**server, "name": "no slash", "description": "x" * 101}
    assert len(list(validator.iter_errors(broken))) == 2  # the copy really checks


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
    assert set(env) <= SETTINGS_ENV


def test_registry_server_json_names_the_repository_and_the_package() -> None:
    server = load("server.json")
    assert server["repository"]["source"] == "github" and server["repository"]["url"].startswith("https://")
    (package,) = server["packages"]
    assert package["identifier"] == "apikey-mcp" and package["version"] == __version__


def test_claude_desktop_config_starts_servers_our_cli_understands() -> None:
    config = load("claude_desktop_config.json")
    for entry in config["mcpServers"].values():
        assert entry["command"] == "apikey-mcp"  # installed from a clone; uvx only after the first release
        parser().parse_args(entry.get("args", []))
        assert set(entry.get("env", {})) <= SETTINGS_ENV


def test_the_version_is_written_once() -> None:
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M) and not re.search(r"^version =", pyproject, re.M)
    assert metadata.version("apikey-mcp") == __version__
