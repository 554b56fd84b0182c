"""What `apikey-mcp` accepts on its command line: the options as tables, and the parser made from them.

An option that sets a setting gets its help (what it is, its variable, its default) from config.py's model when
`--help` is asked for (cli_help.py): give it `help` here only for what the flag adds to the setting's description.
The parser refuses a bad argument in one line (a JSON object when JSON logs were asked for), exit status 2.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__, admin

USAGE_ERROR = 2  # the exit status of a command line or configuration the server cannot start with, as argparse's
Option = tuple[str, dict[str, Any]]  # a flag and the keyword arguments of its add_argument


MAIN_OPTIONS: list[Option] = [
    ("--version", {"action": "version", "version": f"apikey-mcp {__version__}"}),
    ("--sandbox", {"action": "store_true", "default": None}),
    ("--base-url", {"metavar": "URL"}),
    ("--api-key", {"metavar": "KEY"}),
    ("--auth-scheme", {"choices": ["bearer", "x-api-key"]}),
    ("--budget", {"type": int, "dest": "session_budget", "metavar": "CREDITS",
                  "help": "Credits this session may spend (hosted: a new principal's first budget)"}),
    ("--output-dir", {"metavar": "DIR"}),
    ("--max-download-bytes", {"type": int, "metavar": "BYTES"}),
    ("--max-task-download-bytes", {"type": int, "metavar": "BYTES"}),
    ("--download-deadline-seconds", {"type": float, "metavar": "SECONDS"}),
    ("--max-output-dir-bytes", {"type": int, "metavar": "BYTES"}),
    ("--allow-private-downloads", {"action": "store_true", "default": None}),
    ("--media-origin", {"action": "append", "dest": "media_origins", "metavar": "ORIGIN",
                        "help": "Another origin result files load from, for the media app's CSP (repeatable; the "
                                "gateway's origin is always allowed)"}),
    ("--lost-after-seconds", {"type": float, "metavar": "SECONDS"}),
    ("--log-level", {"choices": ["DEBUG", "INFO", "WARNING", "ERROR"]}),
    ("--log-format", {"choices": ["text", "json"]}),
    ("--principal", {"metavar": "NAME"}),
    ("--metrics-port", {"type": int, "metavar": "PORT"}),
    ("--metrics-host", {"metavar": "ADDRESS"}),
    ("--metrics-max-principals", {"type": int, "metavar": "N"}),
]  # fmt: skip

SPENDING_OPTIONS: list[Option] = [
    ("--confirm-above", {"type": int, "metavar": "CREDITS"}),
    ("--max-per-call", {"type": int, "metavar": "N"}),
    ("--allow", {"metavar": "MODEL_OR_MODALITY,..."}),
    ("--period", {"choices": ["day", "week", "month", "none"]}),
    ("--alert-at", {"type": int, "metavar": "PERCENT"}),
    ("--alert-webhook", {"metavar": "URL"}),
]  # fmt: skip

HOSTED_OPTIONS: list[Option] = [
    ("--transport", {"choices": ["stdio", "http", "sse", "streamable-http"]}),
    ("--host", {"metavar": "ADDRESS"}),
    ("--port", {"type": int}),
    ("--public-url", {"metavar": "URL", "help": "URL where the gateway reaches this server, for signed callbacks"}),
    ("--oauth-issuer", {"metavar": "URL", "help": "Accept OAuth 2.1 access tokens (JWT) from this authorization "
                                                  "server on /mcp and /sse; operator tokens move to /token/..."}),
    ("--oauth-scope", {"metavar": "SCOPE"}),
    ("--max-sessions-per-principal", {"type": int, "metavar": "N"}),
    ("--max-sse-streams-per-principal", {"type": int, "metavar": "N"}),
    ("--max-listens-per-principal", {"type": int, "metavar": "N"}),
    ("--forwarded-allow-ips", {"metavar": "ADDRESSES", "help": "Your proxy's address(es), comma-separated: trust "
                                                               "its X-Forwarded-For for the client address"}),
    ("--state-file", {"metavar": "FILE"}),
    ("--database-url", {"metavar": "URL", "help": "PostgreSQL ledger instead, postgresql://... (several server "
                                                  "processes or machines)"}),
    ("--allowed-host", {"action": "append", "dest": "allowed_hosts", "metavar": "HOST",
                        "help": "Another Host header to accept, e.g. behind a proxy (repeatable)"}),
    ("--allow-byok", {"action": "store_true", "default": None,
                      "help": "Let clients send their own gateway key in the x-apikey-gateway-key header"}),
]  # fmt: skip

OPTION_GROUPS: list[tuple[str | None, list[Option]]] = [
    (None, MAIN_OPTIONS),
    ("spending policy (hosted: the default for new principals; admin set-policy)", SPENDING_OPTIONS),
    ("hosted mode (remote agents)", HOSTED_OPTIONS),
]

SANDBOX_OPTIONS: list[Option] = [
    ("--host", {"default": "127.0.0.1", "help": "address to listen on (default 127.0.0.1)"}),
    ("--port", {"type": int, "default": 8787, "help": "port to listen on (default 8787)"}),
    ("--key", {"action": "append", "dest": "keys", "metavar": "KEY",
               "help": "a key to accept (repeatable; default: one random key, printed)"}),
    ("--credits", {"type": int, "default": 100_000, "help": "each key's wallet (default 100000)"}),
    ("--task-seconds", {"type": float, "default": 3.0, "help": "pending to terminal, in seconds (default 3)"}),
    ("--hold", {"action": "store_true",
                "help": "keep new tasks pending until POST /sandbox/tasks/{id}/advance moves them"}),
    ("--webhook-secret", {"help": "secret that signs callbacks (default: random, printed)"}),
    ("--failure-rate", {"type": float, "default": 0.0, "help": "share of tasks that fail, 0-1 (default 0)"}),
    ("--latency", {"type": float, "default": 0.0, "help": "seconds added to every /v1 request (default 0)"}),
    ("--error-rate", {"type": float, "default": 0.0, "help": "share of /v1 requests answered 503 (default 0)"}),
    ("--rate-limit-rate", {"type": float, "default": 0.0,
                           "help": "share of /v1 requests answered 429 (default 0)"}),
]  # fmt: skip

DESCRIPTION = (
    "MCP server for the API-Key gateway (api-key.org), with an enforced session credit budget. With no command it "
    "serves MCP over stdio (for Claude Desktop, IDE agents) or, with --transport, hosted."
)
SANDBOX_HELP = "run the sandbox gateway alone (no account needed; nothing is billed)"
SANDBOX_DESCRIPTION = (
    "Run the sandbox gateway: a real HTTP server that follows the API-Key gateway's contract, with made-up models "
    "and prices. It prints its base URL, keys and webhook secret; point apikey-mcp at it with APIKEY_BASE_URL and "
    "APIKEY_API_KEY. Nothing is billed."
)


def parser() -> argparse.ArgumentParser:
    """The command line: the main command's options, then the `sandbox` and `admin` commands."""
    main = CommandParser(prog="apikey-mcp", description=DESCRIPTION)
    added: list[argparse.Action] = []
    for title, options in OPTION_GROUPS:
        group = main if title is None else main.add_argument_group(title)
        added += [group.add_argument(flag, **arguments) for flag, arguments in options]
    main.before_help = lambda parser: _describe_settings(parser, added)
    commands = main.add_subparsers(dest="command", title="commands", metavar="COMMAND")  # of CommandParser too
    sandbox = commands.add_parser("sandbox", help=SANDBOX_HELP, description=SANDBOX_DESCRIPTION)
    for flag, arguments in SANDBOX_OPTIONS:
        sandbox.add_argument(flag, **arguments)
    admin.add_command(commands.add_parser)
    return main


def setting_flag(name: str) -> str | None:
    """The main command's flag that sets the setting `name`, if one does (`session_budget`: `--budget`)."""
    for _, options in OPTION_GROUPS:
        for flag, arguments in options:
            if arguments.get("dest", flag.removeprefix("--").replace("-", "_")) == name:
                return flag
    return None


def _describe_settings(parser: argparse.ArgumentParser, options: list[argparse.Action]) -> None:
    from .cli_help import describe_settings  # the settings model: imported only for --help

    describe_settings(parser, options)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help lines wrapped at spaces only: URLs, paths and variable names stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:  # argparse's own hook: no public way to wrap help
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, and whose help may be completed just before it is shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.before_help: Callable[[argparse.ArgumentParser], None] | None = None

    def format_help(self) -> str:
        """The help, completed first by `before_help` (made from the settings model only when asked for)."""
        if self.before_help is not None:
            describe, self.before_help = self.before_help, None
            describe(self)
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        """One line, naming the flag and what is wrong (argparse's default adds the whole usage); a JSON object
        when JSON logs were asked for."""
        line = f"{self.prog}: {message}. See {self.prog} --help."
        if wants_json(sys.argv[1:]):
            from .logs import json_line

            self.exit(USAGE_ERROR, json_line(line) + "\n")
        self.exit(USAGE_ERROR, line + "\n")


def wants_json(argv: Sequence[str]) -> bool:
    """Whether JSON logs were asked for, read before (or without) a successful parse: flag or environment."""
    flags = [f"{a} {b}" for a, b in itertools.pairwise(argv)] + list(argv)
    return (
        "--log-format json" in flags
        or "--log-format=json" in flags
        or (os.environ.get("APIKEY_LOG_FORMAT", "").lower() == "json")
    )
