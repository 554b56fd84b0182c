"""Refusals that must be cheap and quiet: token guessing, and requests for another Host or from another Origin.

- `AuthThrottle`: a client address that presented a wrong token `limit` times within a minute gets 429 with
  `Retry-After` on every MCP route until its oldest failure is a minute old, a valid token or not (else the
  answer would still tell a right guess from a wrong one). The address is the TCP peer, or the proxy's
  forwarded one when `--forwarded-allow-ips` names the proxy. A request with no token at all (how an OAuth
  client starts, to discover the authorization server) is no guess and does not count. Bounded: at most
  MAX_ADDRESSES are tracked.
- `HostCheck`: Host and Origin are checked before the SDK's transport sees the request, so a refused one
  is answered 421/403 like any other, without the traceback and dropped connection the SSE transport gives.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000


class AuthThrottle:
    def __init__(
        self, app: ASGIApp, limit: int, *, guarded: Callable[[str], bool], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self.limit = limit
        self._guarded = guarded
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 if it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        now = self.clock()
        while failures and failures[0] <= now - WINDOW_SECONDS:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0.0
        return failures[0] + WINDOW_SECONDS - now if len(failures) >= self.limit else 0.0

    def _failed(self, address: str) -> None:
        metrics.auth_failure()
        failures = self._failures.setdefault(address, deque(maxlen=self.limit))
        failures.append(self.clock())
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)
        if len(failures) == self.limit:
            log.warning("%d failed authentications from %s within a minute: refusing it for a while", self.limit,
                        address)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope["path"]):
            return await self.app(scope, receive, send)
        address = (scope.get("client") or ("unknown", 0))[0]
        if wait := self.retry_after(address):
            metrics.limit_refusal("auth_failures")
            seconds = str(max(1, int(wait + 0.999)))
            body = {"error": "too_many_requests", "error_description": "Too many failed authentications; retry later"}
            return await JSONResponse(body, status_code=429, headers={"Retry-After": seconds})(scope, receive, send)

        guessed = any(name == b"authorization" for name, _ in scope.get("headers", ()))

        async def noting_refusal(message: Message) -> None:
            if guessed and message["type"] == "http.response.start" and message["status"] == 401:
                self._failed(address)
            await send(message)

        await self.app(scope, receive, noting_refusal)


class HostCheck:
    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self._security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = await self._security.validate_request(Request(scope, receive), is_post=False)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)
