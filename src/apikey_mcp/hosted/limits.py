"""Per-principal limits on what stays open: Streamable HTTP sessions, SSE streams, `subscriptions/listen` streams.

The SDK bounds each of these for the whole server only, so one principal could take every slot and lock the
others out. Here each principal has its own allowance, checked before the SDK's; a principal at its limit
gets 429 (HTTP) or an error (listen) that says what to close, and nobody else notices.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Container, Iterable
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import ListenHandler, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.types import INVALID_REQUEST, SubscriptionsListenRequestParams, SubscriptionsListenResult
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from ..accounts import LOCAL

SESSION_HEADER = b"mcp-session-id"
VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.lower().encode("ascii")


def principal_in(scope: Scope) -> str:
    user = scope.get("user")
    return user.access_token.client_id if isinstance(user, AuthenticatedUser) else LOCAL


async def _too_many(send: Send, what: str, limit: int) -> None:
    metrics.limit_refusal(what.replace(" ", "_").lower())
    message = f"Too many open {what} for this principal (limit {limit}): close one, or wait for idle ones to expire"
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"5"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SessionLimit:
    """Streamable HTTP: at most `limit` live sessions per principal. A handshake-era POST without a session id
    opens one; 2026-07-28 requests carry their version in a header and open none."""

    def __init__(self, app: ASGIApp, manager: StreamableHTTPSessionManager, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._manager = manager
        self._sessions: dict[str, set[str]] = {}
        self._opening: Counter[str] = Counter()

    def open_sessions(self, principal: str) -> int:
        live = self._manager._server_instances  # SDK private: the session manager has no public view of them
        if len(self._sessions) > len(live):  # some principals hold only ended sessions: forget them all
            for name in list(self._sessions):
                self._forget_ended(name, live)
        return self._forget_ended(principal, live)

    def _forget_ended(self, principal: str, live: Container[str]) -> int:
        mine = {sid for sid in self._sessions.get(principal, ()) if sid in live}
        if mine:
            self._sessions[principal] = mine
        else:
            self._sessions.pop(principal, None)
        return len(mine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or ())
        version = headers.get(VERSION_HEADER, b"").decode("latin-1") or None
        modern = version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS  # 2026-07-28: no sessions
        if scope["type"] != "http" or scope.get("method") != "POST" or SESSION_HEADER in headers or modern:
            return await self.app(scope, receive, send)
        principal = principal_in(scope)
        if self.open_sessions(principal) + self._opening[principal] >= self.limit:
            return await _too_many(send, "sessions", self.limit)

        async def noting_session(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                for name, value in message.get("headers", ()):
                    if name.lower() == SESSION_HEADER:
                        self._sessions.setdefault(principal, set()).add(value.decode())
            await send(message)

        self._opening[principal] += 1
        try:
            await self.app(scope, receive, noting_session)
        finally:
            _decrement(self._opening, principal)


class StreamLimit:
    """SSE: at most `limit` open `GET /sse` streams per principal."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.open: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = principal_in(scope)
        if self.open[principal] >= self.limit:
            return await _too_many(send, "SSE streams", self.limit)
        self.open[principal] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            _decrement(self.open, principal)


class ListenLimit:
    """`subscriptions/listen` (2026-07-28): at most `limit` streams per principal, and only the principal's own
    task URIs are honoured, so a listener never hears about another principal's tasks."""

    def __init__(
        self, bus: SubscriptionBus, limit: int, total: int, owned: Callable[[str, Iterable[str]], Awaitable[list[str]]]
    ) -> None:
        self.limit = limit
        self._handler = ListenHandler(bus, max_subscriptions=total)
        self._owned = owned
        self.open: Counter[str] = Counter()

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        token = get_access_token()
        principal = token.client_id if token is not None else LOCAL
        if self.open[principal] >= self.limit:
            metrics.limit_refusal("listens")
            raise MCPError(INVALID_REQUEST, f"Too many listen streams for this principal (limit {self.limit})")
        wanted = params.notifications.resource_subscriptions or []
        mine = await self._owned(principal, wanted) or None
        params = params.model_copy(
            update={"notifications": params.notifications.model_copy(update={"resource_subscriptions": mine})}
        )
        self.open[principal] += 1
        try:
            return await self._handler(ctx, params)
        finally:
            _decrement(self.open, principal)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
