"""`apikey-mcp sandbox`: the sandbox gateway served alone, with the keys and secret it prints for a person to use.

Its options are in cli_options.py (every start of apikey-mcp builds the parser; this package is imported only when
the command runs).
"""

from __future__ import annotations

import argparse
import secrets
import sys

from . import Faults, Sandbox


def run_sandbox(args: argparse.Namespace) -> None:
    """Serve the sandbox until stopped, after printing its base URL, keys and webhook secret on stderr."""
    import uvicorn

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
