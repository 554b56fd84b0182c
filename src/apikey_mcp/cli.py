"""Command line: `apikey-mcp` serves MCP over stdio (or hosted, with --transport); `apikey-mcp sandbox` runs the
sandbox gateway alone; `apikey-mcp admin` is the operator's hand on a hosted server's ledger.

`main` is the one place a configuration error becomes words and an exit status: one line (one per setting for the
settings model's own checks), status 2, never a traceback. What the command line accepts is in cli_options.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from . import admin
from .cli_options import USAGE_ERROR, parser, setting_flag
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["main", "parser", "serve"]

log = logging.getLogger("apikey_mcp")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command `argv` (the process's arguments by default) asks for; exit status 2 for a configuration
    the server cannot start with."""
    cli = parser()
    args = cli.parse_args(argv)
    if args.command == "sandbox":
        from .sandbox.command import run_sandbox

        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        run_sandbox(args)
        return
    if args.command == "admin":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        raise SystemExit(admin.run(args))
    try:
        serve(args)
    except ConfigError as exc:  # what the operator must change: one line, exit status 2, never a traceback
        _exit_with(cli, args, [str(exc)])
    except ValidationError as exc:  # the settings themselves: one line for each that is wrong
        if exc.title != "Settings":  # not some other model's, mid-run: a bug, shown as one
            raise
        _exit_with(cli, args, [_setting_error(error) for error in exc.errors()])


def _exit_with(cli: argparse.ArgumentParser, args: argparse.Namespace, lines: list[str]) -> NoReturn:
    """Exit with configuration errors, as JSON objects when JSON logs were asked for."""
    import os

    from .logs import json_line

    if (args.log_format or os.environ.get("APIKEY_LOG_FORMAT", "")).lower() == "json":  # as configured, flag first
        cli.exit(USAGE_ERROR, "".join(json_line(line) + "\n" for line in lines))
    cli.exit(USAGE_ERROR, "".join(f"apikey-mcp: {line}\n" for line in lines))


def _setting_error(error: Any) -> str:
    """`--budget / APIKEY_SESSION_BUDGET must be at least 0 (got -5).`: the setting as the user writes it."""
    from .cli_help import env_name
    from .config import Settings
    from .strict import explain

    name = str(error["loc"][0]) if error["loc"] else ""
    field = Settings.model_fields.get(name)
    env = env_name(name, field) if field else f"APIKEY_{name.upper()}"
    flag = setting_flag(name)
    secret = field is not None and "Secret" in str(field.annotation)
    return f"{' / '.join([flag, env] if flag else [env])} {explain(error, secret=secret)}"


def serve(args: argparse.Namespace) -> None:
    """`apikey-mcp`: settings from flags and env, optionally an in-process sandbox, then the transport."""
    from .config import Settings
    from .logs import configure

    overrides = {k: v for k, v in vars(args).items() if v is not None and k in Settings.model_fields}
    with ExitStack() as stack:
        settings = Settings(**overrides)
        configure(settings.log_level, settings.log_format)
        if settings.sandbox:
            from .sandbox_on_demand import start_sandbox

            overrides.update(start_sandbox(stack, settings))
            settings = Settings(**overrides)
        _start_metrics(stack, settings)

        def starting() -> None:  # once the configuration is known to be good: never before its error
            if settings.sandbox:
                log.warning(
                    "using the SANDBOX gateway at %s: made-up models and prices, nothing is billed", settings.base_url
                )

        if settings.transport == "stdio":
            from .stdio import serve_local

            serve_local(settings, starting=starting)
            return
        from .hosted import serve as serve_http

        serve_http(settings, starting=starting)


def _start_metrics(stack: ExitStack, settings: Settings) -> None:
    """The metrics listener, when a port is set; metrics stay off (no-op calls) otherwise."""
    if settings.metrics_port is None:
        return
    from . import metrics

    collected = metrics.Metrics(settings.metrics_max_principals)
    try:
        port = collected.serve(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {settings.metrics_port}: cannot listen there ({exc})") from None
    metrics.install(collected)
    stack.callback(metrics.install, None)
    stack.callback(collected.close)
    log.info("Prometheus metrics at http://%s:%d/metrics", settings.metrics_host, port)
