"""Build the Desktop Extension: an MCPB bundle of our source and a pyproject naming its dependencies.

The bundle holds no installed packages and no compiled code (manifest 0.4, server type `uv`): Claude
Desktop's uv installs the dependencies for the user's own platform and Python. This script stages the
bundle in build/mcpb, validates the manifest and packs it with the official `mcpb` CLI (installed in
tests/hosted/node by `npm ci --prefix tests/hosted/node`), then checks what it packed:

    python scripts/build_bundle.py [--try-install]     # -> dist/apikey-mcp-<version>.mcpb

`--try-install` also installs and starts the unpacked bundle the way Claude Desktop does (`uv run`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MCPB = ROOT / "tests" / "hosted" / "node" / "node_modules" / ".bin" / ("mcpb.cmd" if os.name == "nt" else "mcpb")
COMPILED = (".so", ".pyd", ".dylib", ".dll")
MUST_HOLD = {
    "manifest.json",
    "pyproject.toml",
    "LICENSE",
    "server/main.py",
    "src/apikey_mcp/cli.py",
    "src/apikey_mcp/ui/media.html",
    "src/apikey_mcp/ui/budget.html",
}  # the MCP Apps


def version() -> str:
    """The one place the version is written (pyproject.toml reads it from there too)."""
    text = (ROOT / "src" / "apikey_mcp" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if found is None:
        raise SystemExit("no __version__ in src/apikey_mcp/__init__.py")
    return found.group(1)


def bundle_pyproject() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = "".join(f'    "{d}",\n' for d in project["dependencies"])
    return (
        "# The Desktop Extension's environment: uv installs these for the user's platform and Python.\n"
        "[project]\n"
        'name = "apikey-mcp-desktop-extension"\n'
        f'version = "{version()}"\n'
        f'requires-python = "{project["requires-python"]}"\n'
        f"dependencies = [\n{dependencies}]\n\n"
        "[tool.uv]\n"
        "package = false  # nothing to build: server/main.py runs the bundled source\n"
    )


def stage(where: Path) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    (where / "server").mkdir(parents=True)
    manifest = json.loads((ROOT / "manifests" / "manifest.json").read_text())
    if manifest["version"] != version():
        raise SystemExit(f"manifests/manifest.json says version {manifest['version']}, the package {version()}")
    shutil.copy2(ROOT / "manifests" / "manifest.json", where / "manifest.json")
    shutil.copy2(ROOT / "manifests" / "server" / "main.py", where / "server" / "main.py")
    shutil.copy2(ROOT / "LICENSE", where / "LICENSE")
    shutil.copytree(
        ROOT / "src" / "apikey_mcp", where / "src" / "apikey_mcp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (where / "pyproject.toml").write_text(bundle_pyproject())
    return where


def run(*command: str | Path) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def check(bundle: Path) -> list[str]:
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
    compiled = [n for n in names if n.lower().endswith(COMPILED)]
    if compiled:
        raise SystemExit(f"{bundle.name} holds compiled code, which runs on one platform only: {compiled}")
    if missing := MUST_HOLD - set(names):
        raise SystemExit(f"{bundle.name} lacks {sorted(missing)}")
    return names


def try_install(bundle: Path) -> tuple[str, list[str]]:
    """Unpack the bundle and start it as Claude Desktop does (uv installs the dependencies, then runs it):
    its --version, then the tools an MCP client lists from it on the sandbox, as the Sandbox switch runs it."""
    import anyio
    from mcp import Client, StdioServerParameters

    async def tools(unpacked: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")} | {"APIKEY_SANDBOX": "true"}
        server = StdioServerParameters(
            command="uv", args=["run", "--quiet", "--directory", unpacked, "server/main.py"], env=env
        )
        with anyio.fail_after(300):
            async with Client(server) as client:
                return [tool.name for tool in (await client.list_tools()).tools]

    with tempfile.TemporaryDirectory() as unpacked:
        with zipfile.ZipFile(bundle) as archive:
            archive.extractall(unpacked)
        started = run("uv", "run", "--quiet", "--directory", unpacked, "server/main.py", "--version").strip()
        return started, anyio.run(tools, unpacked)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--out", type=Path, default=ROOT / "dist")
    options.add_argument("--try-install", action="store_true", help="also install and start it with uv")
    args = options.parse_args()
    if not MCPB.exists():
        raise SystemExit(f"{MCPB} is missing: run npm ci --prefix tests/hosted/node")
    staged = stage(ROOT / "build" / "mcpb")
    print(run(MCPB, "validate", staged / "manifest.json").strip())
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.out / f"apikey-mcp-{version()}.mcpb"
    bundle.unlink(missing_ok=True)
    run(MCPB, "pack", staged, bundle)
    names = check(bundle)
    print(f"{bundle.relative_to(ROOT)}: {len(names)} files, {bundle.stat().st_size // 1024} KiB, no compiled code")
    if args.try_install:
        started, tools = try_install(bundle)
        if started != f"apikey-mcp {version()}" or "generate_video" not in tools:
            raise SystemExit(f"the unpacked bundle answered {started!r} to --version and listed {tools}")
        print(f"installed with uv and started: {started}, {len(tools)} tools listed on the sandbox")


if __name__ == "__main__":
    sys.exit(main())
