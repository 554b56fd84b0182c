"""`apikey-mcp --help` is complete: every setting of the model (config.py) with its environment variable and its
default, including the settings that exist only as variables, ending with a pointer to the README's table; and
every option of every command has help. The list comes from the model, so a setting added later is covered."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest
from pydantic import Field

from apikey_mcp import cli, cli_help
from apikey_mcp.config import Settings
from apikey_mcp.paths import default_state_file


def help_text() -> str:
    return " ".join(cli.parser().format_help().split())  # the words, however the terminal wraps them


def described(text: str, env: str, default: str) -> bool:
    """Whether the help gives `env` with `default`: in its option's help, or in its line among the variables."""
    in_option = f"env {env}; default {default})" in text
    in_variables = re.search(rf"(?<![A-Z_]){env}: ((?!APIKEY_\w+: ).)*?\(default {re.escape(default)}\)", text)
    return in_option or in_variables is not None


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_help_names_every_setting_with_its_variable_and_default(name: str) -> None:
    field = Settings.model_fields[name]
    env, default = cli_help.env_name(name, field), cli_help.default_text(name, field)
    assert described(help_text(), env, default), f"{env} (default {default}) is not in --help"


def test_the_variables_only_settings_and_the_state_files_default_path_are_there() -> None:
    text = help_text()
    for env in ("APIKEY_MCP_AUTH_TOKENS", "APIKEY_WEBHOOK_SECRET", "APIKEY_REQUEST_STATE_KEY"):
        assert re.search(rf"{env}: \S", text), env  # listed among the variables, with what it is
    assert (
        f"--state-file FILE SQLite ledger: budgets, reservations, audit trail (env APIKEY_STATE_FILE; default "
        f"{default_state_file()})" in text
    )
    assert described(text, "APIKEY_MAX_DOWNLOAD_BYTES", "512 MiB") and described(text, "APIKEY_MAX_BODY_BYTES", "1 MiB")
    assert text.endswith("The Configuration table in README.md describes every setting.")


def test_a_setting_added_to_the_model_is_in_the_help_with_no_more_work(monkeypatch: pytest.MonkeyPatch) -> None:
    class Later(Settings):
        later_knob: int = Field(default=7, description="A knob another branch adds.")

    monkeypatch.setattr(cli_help, "Settings", Later)
    assert "APIKEY_LATER_KNOB: A knob another branch adds (default 7)" in help_text()


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every subcommand's, at any depth (argparse has no public way to list a parser's actions)."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += parsers(child)
    return found


def test_every_option_of_every_command_has_help_and_every_command_a_description() -> None:
    main = cli.parser()
    main.format_help()  # the settings' help is made from the model when help is asked for
    every = parsers(main)
    assert {p.prog for p in every} >= {
        "apikey-mcp",
        "apikey-mcp sandbox",
        "apikey-mcp admin",
        "apikey-mcp admin set-budget",
        "apikey-mcp admin close",
    }
    for parser in every:
        assert parser.description, f"{parser.prog} --help has no description"
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help"


@pytest.mark.slow
def test_help_as_typed() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")}
    done = subprocess.run(
        [sys.executable, "-m", "apikey_mcp", "--help"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "APIKEY_REQUEST_STATE_KEY" in done.stdout
    sandbox = subprocess.run(
        [sys.executable, "-m", "apikey_mcp", "sandbox", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sandbox.returncode == 0 and "follows the API-Key gateway's contract" in " ".join(sandbox.stdout.split())
