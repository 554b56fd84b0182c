"""What a person at a terminal reads: `apikey-mcp --help` made from the settings model (config.py), every setting
with its flag if it has one, its environment variable and its default, so that a setting added to the model is in
the help with no more work; and the hint shown when `apikey-mcp` is typed in a terminal instead of run by a client."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import Settings
from .paths import default_state_file

README_POINTER = "The Configuration table in README.md describes every setting."
_DEFAULTS = {"oauth_audience": "<public-url>/mcp"}  # defaults that depend on another setting


def env_name(name: str, field: FieldInfo) -> str:
    aliases = getattr(field.validation_alias, "choices", None)
    return str(aliases[-1]) if aliases else f"APIKEY_{name.upper()}"


def default_text(name: str, field: FieldInfo) -> str:
    if name == "state_file":
        return str(default_state_file())  # per OS, from platformdirs
    if name in _DEFAULTS:
        return _DEFAULTS[name]
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if value is None or value == [] or value is PydanticUndefined:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and name.endswith("_bytes"):
        return _bytes(value)
    if isinstance(value, int) and name.endswith(("_seconds", "_interval")):
        return f"{value} s"
    return str(value)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def setting_help(name: str, field: FieldInfo, note: str | None = None, *, env: bool = True) -> str:
    """`note` (the flag's own words) or the model's description, then the variable and the default."""
    text = note or field.description or name.replace("_", " ").capitalize()
    text = text[:-1] if text.endswith(".") and not text.endswith("...") else text
    variable = env_name(name, field)
    where = f"env {variable}; " if env and variable not in text else ""
    return f"{text} ({where}default {default_text(name, field)})"


def describe_settings(parser: argparse.ArgumentParser, options: Sequence[argparse.Action]) -> None:
    """Every one of `options` (the parser's) that sets a setting gets its help from the model; the settings with
    no option are listed in the epilog, which ends with a pointer to the README's table."""
    fields = Settings.model_fields
    flagged = set()
    for action in options:
        if action.dest in fields:
            action.help = setting_help(action.dest, fields[action.dest], action.help).replace("%", "%%")
            flagged.add(action.dest)
    lines = ["settings with no flag (environment variables only):"]
    for name, field in fields.items():
        if name not in flagged:
            described = setting_help(name, field, env=False)
            lines.append(
                textwrap.fill(
                    f"{env_name(name, field)}: {described}", width=100, initial_indent="  ", subsequent_indent="      "
                )
            )
    if parser.description:
        parser.description = textwrap.fill(parser.description, width=100)
    parser.epilog = "\n".join([*lines, "", "Flags override environment variables. " + README_POINTER])


def terminal_hint(sandbox: bool) -> str:
    """What a person who typed `apikey-mcp` in a terminal sees (on stderr: stdout stays the protocol's)."""
    command = "apikey-mcp --sandbox" if sandbox else "apikey-mcp"
    return (
        "This is the MCP server over stdio: it waits for an MCP client to speak JSON-RPC on stdin, so typing here "
        "does nothing useful.\n"
        f"  Try it with the MCP Inspector: npx -y @modelcontextprotocol/inspector {command}\n"
        "  Or add it to Claude Desktop, Claude Code, Cursor or VS Code (README: Client configuration).\n"
        "  Stop it with Ctrl-C (or Ctrl-D)."
    )
