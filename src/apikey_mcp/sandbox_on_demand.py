"""`apikey-mcp --sandbox`: the sandbox gateway inside this process, listening at once and built on first use.

It lives outside the `sandbox` package on purpose: importing that package is part of what it puts off.
"""

from __future__ import annotations

import asyncio
import secrets
import select
import socket
import threading
from contextlib import ExitStack
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings
    from .sandbox.server import PromptServer


def start_sandbox(stack: ExitStack, settings: Settings) -> dict[str, object]:
    """A sandbox gateway in this process, stopped with `stack`; the settings that point the server at it (when
    hosted, its signed callbacks come back to this server)."""
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
        self._server: PromptServer | None = None
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
