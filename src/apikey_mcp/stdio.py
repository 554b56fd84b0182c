"""Serving over stdio, recording into the local ledger, until the client closes stdin or the process is told to stop.

Clients stop a stdio server by closing its stdin, then SIGTERM. Either way the session's lifespan closes
and every unfinished task id is logged to stderr. After a signal, a read of stdin may still be blocked in
a worker thread that nothing can interrupt, so once the session has shut down the process ends at once.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import anyio
from mcp.server.mcpserver import MCPServer

from .config import Settings

log = logging.getLogger(__name__)
SHUTDOWN_SECONDS = 10  # for the session to shut down after a signal before the process ends anyway


def serve_stdio(build: Callable[[anyio.Event], MCPServer]) -> None:
    """Serve the server that `build(closed)` makes; it must set `closed` when its lifespan has ended."""
    anyio.run(_serve, build)


async def _serve(build: Callable[[anyio.Event], MCPServer]) -> None:
    closed = anyio.Event()
    server = build(closed)
    session = anyio.CancelScope()

    async def stop_on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                session.cancel()
                with anyio.move_on_after(SHUTDOWN_SECONDS):
                    await closed.wait()
                logging.shutdown()
                os._exit(0)  # the blocked read of stdin would keep the process alive

    async with anyio.create_task_group() as group:
        group.start_soon(stop_on_signal)
        with session:
            await server.run_stdio_async()
        group.cancel_scope.cancel()  # stdin closed: the session is over


def serve_local(settings: Settings, *, starting: Callable[[], None] = lambda: None) -> None:
    """Serve MCP over stdio, recording into the local ledger; `starting` once the ledger opened (the last check
    of the configuration). Typed in a terminal, it says on stderr what it is (stdout stays the protocol's)."""
    import sys

    from .cli_help import terminal_hint
    from .server import build_server
    from .sessions import local_principal, state_file
    from .stores.sqlite import SqliteLedgerStore

    path = state_file(settings)
    store = SqliteLedgerStore(path)  # or ConfigError: a file that is empty or not ours
    principal = local_principal(settings)
    starting()
    log.info(
        "serving MCP over stdio against %s (budget %d credits; ledger %s, principal %s)",
        settings.base_url,
        settings.session_budget,
        path,
        principal,
    )
    if sys.stdin.isatty():  # typed in a terminal, where a client was expected: say what this is
        print(terminal_hint(settings.sandbox), file=sys.stderr, flush=True)
    try:
        serve_stdio(lambda closed: build_server(settings, store=store, closed=closed, principal=principal))
    finally:
        anyio.run(store.aclose)
