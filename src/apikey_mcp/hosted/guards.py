"""Refusals that must be cheap and quiet: token guessing, and requests for another Host or from another Origin.

- `AuthThrottle`: a client address that presented a wrong token `limit` times within a minute gets 429 with
  `Retry-After`, instead of 401, for every further wrong token until its oldest failure is a minute old. A
  request whose credentials verify is never refused: the throttle only ever replaces a refusal, so junk from
  a shared address (a NAT, an office, a misconfigured client) cannot lock a valid token out. The address is
  `scope["client"]` as uvicorn reports it: the TCP peer, or, when `--forwarded-allow-ips` names the proxy,
  the client its X-Forwarded-For names (uvicorn's ProxyHeadersMiddleware; no parser of our own). A request
  with no token at all (how an OAuth client starts, to discover the authorization server) is no guess and
  does not count. Bounded: at most MAX_ADDRESSES are tracked.
- `HostCheck`: Host and Origin are checked against the allow-lists `transport_security` makes (against DNS
  rebinding) before the SDK's transport sees the request, so a refused one is answered 421/403 like any
  other, without the traceback and dropped connection the SSE transport gives.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from ..config import Settings
from ..windows import WindowLimit

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host headers and Origins to accept: loopback names when bound there, the public URL, the operator's."""
    names = ["127.0.0.1", "localhost", "[::1]"] if is_loopback(settings.host) else [settings.host]
    if settings.public_url:
        names.append(urlsplit(settings.public_url).netloc)
    names += settings.allowed_hosts
    hosts = [h for name in names for h in ([name] if urlsplit(f"//{name}").port else [name, f"{name}:*"])]
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class AuthThrottle:
    def __init__(
        self, app: ASGIApp, limit: int, *, guarded: Callable[[str], bool], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self.limit = limit
        self._guarded = guarded
        self._failures = WindowLimit(limit, WINDOW_SECONDS, max_keys=MAX_ADDRESSES, clock=clock)

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 if it may now."""
        return self._failures.wait(address)

    def _failed(self, address: str) -> None:
        metrics.auth_failure()
        self._failures.note(address)
        if self._failures.count(address) == self.limit:
            log.warning(
                "%d failed authentications from %s within a minute: refusing it for a while", self.limit, address
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope["path"]):
            return await self.app(scope, receive, send)
        if not any(name == b"authorization" for name, _ in scope.get("headers", ())):
            return await self.app(scope, receive, send)  # no token: discovery, not a guess
        address = (scope.get("client") or ("unknown", 0))[0]  # after uvicorn's proxy headers, if trusted
        wait = self.retry_after(address)
        replaced = False

        async def throttling_refusals(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 401:
                self._failed(address)
                if wait:  # a refusal all the same: it says when to try again, not whether the token was near
                    metrics.limit_refusal("auth_failures")
                    replaced = True
                    return await _too_many_failures(send, wait)
            if not replaced:  # the replaced 401's body goes nowhere
                await send(message)

        await self.app(scope, receive, throttling_refusals)


async def _too_many_failures(send: Send, wait: float) -> None:
    body = b'{"error":"too_many_requests","error_description":"Too many failed authentications; retry later"}'
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", b"%d" % max(1, int(wait + 0.999))),
        (b"content-length", b"%d" % len(body)),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self._security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = await self._security.validate_request(Request(scope, receive), is_post=False)
        if refusal is not None:
            return await refusal(scope, receive, send)
        await self.app(scope, receive, send)
