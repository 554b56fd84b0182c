"""The access log: one line per HTTP request, as a pure ASGI middleware (streamed answers pass untouched).

`GET /mcp 401 1.2 ms anonymous`: method, path, status, duration and the principal the request authenticated as
(or "anonymous"). Never a header, a token, a key or a query string (a callback's query names a reservation, a
proxy's may carry anything). Logged through `logging` ("apikey_mcp.access"), the fields also as `extra`, so a
structured formatter can use them.
"""

from __future__ import annotations

import logging
import time

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("apikey_mcp.access")
ANONYMOUS = "anonymous"
MAX_PATH = 200  # characters of a path kept in the log: a path is the client's to choose


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # unless an answer starts: the app failed before it could answer

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _log(scope, status, (time.perf_counter() - started) * 1000)


def _log(scope: Scope, status: int, duration_ms: float) -> None:
    user = scope.get("user")  # set by the authentication middleware inside, on this same scope
    principal = user.access_token.client_id if isinstance(user, AuthenticatedUser) else ANONYMOUS
    method, path = _printable(str(scope.get("method", "?"))[:16]), _printable(str(scope.get("path", ""))[:MAX_PATH])
    fields = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_ms, 1),
        "principal": principal,
    }
    log.info("%s %s %d %.1f ms %s", method, path, status, duration_ms, _printable(principal), extra=fields)


def _printable(text: str) -> str:
    """No line breaks or control characters from the client in a log line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
