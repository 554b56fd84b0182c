"""Command line: `apikey-mcp` serves MCP over stdio; `apikey-mcp sandbox` runs the sandbox gateway alone;
`apikey-mcp admin` is the operator's hand on a hosted server's ledger."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import select
import socket
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from . import __version__, admin
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("apikey_mcp")
USAGE_ERROR = 2  # the exit status of a configuration the server cannot start with, as argparse uses


def _sandbox_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sandbox",
        help="run the sandbox gateway alone (no account needed; nothing is billed)",
        description="Run the sandbox gateway: a real HTTP server that follows the API-Key gateway's contract, with "
        "made-up models and prices. It prints its base URL, keys and webhook secret; point apikey-mcp at it with "
        "APIKEY_BASE_URL and APIKEY_API_KEY. Nothing is billed.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787)")
    p.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help="a key to accept (repeatable; default: one random key, printed)",
    )
    p.add_argument("--credits", type=int, default=100_000, help="each key's wallet (default 100000)")
    p.add_argument("--task-seconds", type=float, default=3.0, help="pending to terminal, in seconds (default 3)")
    p.add_argument(
        "--hold", action="store_true", help="keep new tasks pending until POST /sandbox/tasks/{id}/advance moves them"
    )
    p.add_argument("--webhook-secret", help="secret that signs callbacks (default: random, printed)")
    p.add_argument("--failure-rate", type=float, default=0.0, help="share of tasks that fail, 0-1 (default 0)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every /v1 request (default 0)")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of /v1 requests answered 503 (default 0)")
    p.add_argument("--rate-limit-rate", type=float, default=0.0, help="share of /v1 requests answered 429 (default 0)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help lines wrapped at spaces only: URLs, paths and variable names stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class _Parser(argparse.ArgumentParser):
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
        if _wants_json(sys.argv[1:]):
            from .logs import json_line

            self.exit(USAGE_ERROR, json_line(line) + "\n")
        self.exit(USAGE_ERROR, line + "\n")


def _wants_json(argv: Sequence[str]) -> bool:
    import itertools
    import os

    flags = [f"{a} {b}" for a, b in itertools.pairwise(argv)] + list(argv)
    return (
        "--log-format json" in flags
        or "--log-format=json" in flags
        or (os.environ.get("APIKEY_LOG_FORMAT", "").lower() == "json")
    )


def parser() -> argparse.ArgumentParser:
    """The command line. An option that sets a setting gets its help (variable, default) from config.py's model:
    give it `help=` only for what the flag adds to the setting's description."""
    p = _Parser(
        prog="apikey-mcp",
        description="MCP server for the API-Key gateway (api-key.org), with an enforced session credit budget. "
        "With no command it serves MCP over stdio (for Claude Desktop, IDE agents) or, with --transport, hosted.",
    )
    p.add_argument("--version", action="version", version=f"apikey-mcp {__version__}")
    p.add_argument("--sandbox", action="store_true", default=None)
    p.add_argument("--base-url", metavar="URL")
    p.add_argument("--api-key", metavar="KEY")
    p.add_argument("--auth-scheme", choices=["bearer", "x-api-key"])
    p.add_argument(
        "--budget",
        type=int,
        dest="session_budget",
        metavar="CREDITS",
        help="Credits this session may spend (hosted: a new principal's first budget)",
    )
    p.add_argument("--output-dir", metavar="DIR")
    p.add_argument("--max-download-bytes", type=int, metavar="BYTES")
    p.add_argument("--max-task-download-bytes", type=int, metavar="BYTES")
    p.add_argument("--download-deadline-seconds", type=float, metavar="SECONDS")
    p.add_argument("--max-output-dir-bytes", type=int, metavar="BYTES")
    p.add_argument("--allow-private-downloads", action="store_true", default=None)
    p.add_argument(
        "--media-origin",
        action="append",
        dest="media_origins",
        metavar="ORIGIN",
        help="Another origin result files load from, for the media app's CSP (repeatable; the "
        "gateway's origin is always allowed)",
    )
    p.add_argument("--lost-after-seconds", type=float, metavar="SECONDS")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--principal", metavar="NAME")
    p.add_argument("--metrics-port", type=int, metavar="PORT")
    p.add_argument("--metrics-host", metavar="ADDRESS")
    p.add_argument("--metrics-max-principals", type=int, metavar="N")
    spending = p.add_argument_group("spending policy (hosted: the default for new principals; admin set-policy)")
    spending.add_argument("--confirm-above", type=int, metavar="CREDITS")
    spending.add_argument("--max-per-call", type=int, metavar="N")
    spending.add_argument("--allow", metavar="MODEL_OR_MODALITY,...")
    spending.add_argument("--period", choices=["day", "week", "month", "none"])
    spending.add_argument("--alert-at", type=int, metavar="PERCENT")
    spending.add_argument("--alert-webhook", metavar="URL")
    hosted = p.add_argument_group("hosted mode (remote agents)")
    hosted.add_argument("--transport", choices=["stdio", "http", "sse", "streamable-http"])
    hosted.add_argument("--host", metavar="ADDRESS")
    hosted.add_argument("--port", type=int)
    hosted.add_argument(
        "--public-url", metavar="URL", help="URL where the gateway reaches this server, for signed callbacks"
    )
    hosted.add_argument(
        "--oauth-issuer",
        metavar="URL",
        help="Accept OAuth 2.1 access tokens (JWT) from this "
        "authorization server on /mcp and /sse; operator tokens move to /token/...",
    )
    hosted.add_argument("--oauth-scope", metavar="SCOPE")
    hosted.add_argument("--max-sessions-per-principal", type=int, metavar="N")
    hosted.add_argument("--max-sse-streams-per-principal", type=int, metavar="N")
    hosted.add_argument("--max-listens-per-principal", type=int, metavar="N")
    hosted.add_argument(
        "--forwarded-allow-ips",
        metavar="ADDRESSES",
        help="Your proxy's address(es), comma-separated: trust its X-Forwarded-For for the client address",
    )
    hosted.add_argument("--state-file", metavar="FILE")
    hosted.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL ledger instead, postgresql://... (several server processes or machines)",
    )
    hosted.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="HOST",
        help="Another Host header to accept, e.g. behind a proxy (repeatable)",
    )
    hosted.add_argument(
        "--allow-byok",
        action="store_true",
        default=None,
        help="Let clients send their own gateway key in the x-apikey-gateway-key header",
    )
    sub: argparse._SubParsersAction[Any] = p.add_subparsers(  # of _Parser: one-line errors too
        dest="command", title="commands", metavar="COMMAND"
    )
    _sandbox_parser(sub)
    admin.add_parser(sub)
    p.before_help = _describe_settings
    return p


def _describe_settings(p: argparse.ArgumentParser) -> None:
    from .cli_help import describe_settings  # the settings model: imported only for --help

    describe_settings(p)


def run_sandbox(args: argparse.Namespace) -> None:
    import uvicorn

    from .sandbox import Faults, Sandbox

    keys = args.keys or ["sk-sandbox-" + secrets.token_hex(12)]
    faults = Faults(latency=args.latency, error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate)
    sandbox = Sandbox(
        keys,
        credits=args.credits,
        task_seconds=args.task_seconds,
        failure_rate=args.failure_rate,
        webhook_secret=args.webhook_secret,
        faults=faults,
        hold=args.hold,
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    lines = [
        "apikey-mcp SANDBOX gateway: follows the API-Key contract; made-up prices; nothing is billed.",
        f"  base URL:       http://{host}:{args.port}",
        *(f"  API key:        {key}  ({args.credits} credits)" for key in keys),
        f"  webhook secret: {sandbox.webhook_secret}",
        f"  try: APIKEY_BASE_URL=http://{host}:{args.port} APIKEY_API_KEY={keys[0]} apikey-mcp",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
    uvicorn.run(sandbox.app, host=args.host, port=args.port, log_level="warning")


def main(argv: Sequence[str] | None = None) -> None:
    cli = parser()
    args = cli.parse_args(argv)
    if args.command == "sandbox":
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
        _exit_with(cli, args, [_setting_error(cli, error) for error in exc.errors()])


def _exit_with(cli: argparse.ArgumentParser, args: argparse.Namespace, lines: list[str]) -> NoReturn:
    """Exit with configuration errors, as JSON objects when JSON logs were asked for."""
    import os

    from .logs import json_line

    if (args.log_format or os.environ.get("APIKEY_LOG_FORMAT", "")).lower() == "json":  # as configured, flag first
        cli.exit(USAGE_ERROR, "".join(json_line(line) + "\n" for line in lines))
    cli.exit(USAGE_ERROR, "".join(f"apikey-mcp: {line}\n" for line in lines))


def _setting_error(cli: argparse.ArgumentParser, error: Any) -> str:
    """`--budget / APIKEY_SESSION_BUDGET must be at least 0 (got -5).`: the setting as the user writes it."""
    from .config import Settings
    from .strict import explain

    name = str(error["loc"][0]) if error["loc"] else ""
    field = Settings.model_fields.get(name)
    aliases = getattr(field.validation_alias, "choices", None) if field else None
    env = str(aliases[-1]) if aliases else f"APIKEY_{name.upper()}"
    flags = [o for a in cli._actions if a.dest == name for o in a.option_strings if o.startswith("--")]
    secret = field is not None and "Secret" in str(field.annotation)
    return f"{' / '.join([*flags[:1], env])} {explain(error, secret=secret)}"


def serve(args: argparse.Namespace) -> None:
    """`apikey-mcp`: settings from flags and env, optionally an in-process sandbox, then the transport."""
    from .config import Settings
    from .logs import configure

    overrides = {k: v for k, v in vars(args).items() if v is not None and k in Settings.model_fields}
    with ExitStack() as stack:
        settings = Settings(**overrides)
        configure(settings.log_level, settings.log_format)
        if settings.sandbox:
            overrides.update(_start_sandbox(stack, settings))
            settings = Settings(**overrides)
        _start_metrics(stack, settings)

        def starting() -> None:  # once the configuration is known to be good: never before its error
            if settings.sandbox:
                log.warning(
                    "using the SANDBOX gateway at %s: made-up models and prices, nothing is billed", settings.base_url
                )

        if settings.transport == "stdio":
            from .sessions import serve_local

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


def _start_sandbox(stack: ExitStack, settings: Settings) -> dict[str, object]:
    """A sandbox gateway in this process; when hosted, its signed callbacks come back to this server."""
    key = "sk-sandbox-" + secrets.token_hex(12)
    secret = "whsec_" + secrets.token_hex(16)
    sandbox = stack.enter_context(SandboxOnDemand(key, secret))
    overrides: dict[str, object] = {"base_url": sandbox.url, "api_key": key}
    if settings.transport != "stdio" and settings.public_url is None:
        overrides |= {"public_url": f"http://{settings.host}:{settings.port}", "webhook_secret": secret}
    return overrides


class SandboxOnDemand:
    """The in-process sandbox gateway, built and served only when its first request arrives.

    Building it (its modules, catalogue and app) takes a good part of a cold start, and the MCP handshake never
    needs it; so its socket listens from the start (a request made early waits in the backlog) while a thread
    sleeps in select() until the first connection, then serves it with uvicorn.
    """

    def __init__(self, key: str, webhook_secret: str) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._wake, self._waker = socket.socketpair()
        self._server: Any = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, args=(key, webhook_secret), name="sandbox", daemon=True)

    def _run(self, key: str, webhook_secret: str) -> None:
        readable, _, _ = select.select([self._sock, self._wake], [], [])
        if self._wake in readable:
            return  # stopped before anyone asked
        import uvicorn

        from .sandbox import Sandbox
        from .sandbox.server import PromptServer

        app = Sandbox([key], webhook_secret=webhook_secret).app
        self._server = PromptServer(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
        if self._stopping:
            self._server.should_exit = True
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def __enter__(self) -> SandboxOnDemand:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._waker.send(b"x")
        if self._server is not None:
            self._server.stop_soon()
        self._thread.join(timeout=10)
        for sock in (self._sock, self._wake, self._waker):
            sock.close()
