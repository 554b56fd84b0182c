"""Fault knobs for reliability tests and benchmarks, and the middleware that applies them to /v1/* requests.

It also counts every request by route, so tests can check how often the gateway was asked (say, for a
task's status while a callback should have made polling unnecessary).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

import anyio
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import SandboxError

BadLink = Literal["link", "redirect"]
MALFORMED_LINK = "http://h:xx/a.png"  # a port that is not a number: httpx2 refuses to parse it
MALFORMED_REDIRECT = "http://b:xx/"


@dataclass
class Faults:
    """Knobs for reliability tests and benchmarks, applied to /v1/* requests."""

    latency: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    scripted: deque[tuple[int, float | None]] = field(default_factory=deque)  # exact next answers
    # For the next creates (POSTs but the estimate): a gateway refusal before anything is done, or an answer
    # lost after the task was made (a proxy's 504).
    refused_creates: deque[int] = field(default_factory=deque)
    lost_creates: deque[int] = field(default_factory=deque)
    # Result files from a slow host: one byte every `file_drip` seconds, never finished (0: off).
    file_drip: float = 0.0
    # Requests of a route ("POST /v1/videos") wait, counted but unanswered, until their gate is set: a test
    # holds a request in flight for as long as it needs, with no timer to race.
    gates: dict[str, threading.Event] = field(default_factory=dict)
    # Every /v1/* request answers 401 until this time.monotonic() (a key revoked for a while; 0: off).
    unauthorized_until: float = 0.0
    # The next tasks created succeed with a broken result link: "link" (an output URL no client can parse,
    # http://h:xx/a.png) or "redirect" (a good-looking link whose host answers 302 to http://b:xx/).
    bad_links: deque[BadLink] = field(default_factory=deque)
    unauthorized_answers: Counter[str] = field(default_factory=Counter)  # path -> 401s the window answered

    def unauthorized_for(self, seconds: float) -> None:
        """Answer 401 to every /v1/* request for `seconds` from now."""
        self.unauthorized_until = time.monotonic() + seconds

    def take_bad_link(self) -> BadLink | None:
        """The broken link the next task is to succeed with, if one is queued in `bad_links`."""
        return self.bad_links.popleft() if self.bad_links else None


_GROUPED = {"/v1/tasks/": "/v1/tasks/{task_id}", "/sandbox/files/": "/sandbox/files/{file}"}


async def _drip(receive: Receive, send: Send, every: float) -> None:
    """A 200 whose body comes one byte at a time, until the client goes away."""
    headers = [(b"content-type", b"image/png"), (b"content-length", b"1000000")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    async with anyio.create_task_group() as group:

        async def until_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(until_gone)
        for _ in range(1_000_000):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await anyio.sleep(every)


class FaultsMiddleware:
    """Counts requests by route and applies the fault knobs to /v1/*; errors become the gateway envelope."""

    def __init__(self, app: ASGIApp, faults: Faults, requests: Counter[str], rng: random.Random) -> None:
        """`requests` counts by route label; `rng` is the sandbox's seeded chance, so a seed replays the faults."""
        self.app, self.faults, self.requests, self.rng = app, faults, requests, rng

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = next((label for prefix, label in _GROUPED.items() if path.startswith(prefix)), path)
        label = f"{scope['method']} {route}"
        self.requests[label] += 1
        if path.startswith("/sandbox/files/") and self.faults.file_drip:
            await _drip(receive, send, self.faults.file_drip)
            return
        if (gate := self.faults.gates.get(label)) is not None:
            while not gate.is_set():  # noqa: ASYNC110 (a threading.Event, set from the test's thread)
                await anyio.sleep(0.002)
        if path.startswith("/v1/"):
            refusal = await self._refusal(scope["method"], path)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            if _is_create(scope["method"], path) and self.faults.lost_creates:
                status = self.faults.lost_creates.popleft()
                await self.app(scope, receive, _discard)  # the work is done, its answer lost
                await PlainTextResponse("Gateway Timeout", status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _refusal(self, method: str, path: str) -> Response | None:
        """What a fault answers instead of the gateway, if one applies: the 401 window, a scripted or random
        5xx or 429 (after the latency), or a refused create."""
        faults = self.faults
        if time.monotonic() < faults.unauthorized_until:
            faults.unauthorized_answers[path] += 1
            return SandboxError(401, "invalid_api_key", "Invalid API key (sandbox fault)").response()
        try:
            await self._scripted_or_random_fault()
        except SandboxError as exc:
            return exc.response()
        if _is_create(method, path) and faults.refused_creates:
            status = faults.refused_creates.popleft()
            return SandboxError(status, "server_error", f"Sandbox fault: {status}").response()
        return None

    async def _scripted_or_random_fault(self) -> None:
        faults, rng = self.faults, self.rng
        if faults.latency:
            await anyio.sleep(faults.latency)
        if faults.scripted:
            status, retry_after = faults.scripted.popleft()
        elif faults.error_rate and rng.random() < faults.error_rate:
            status, retry_after = 503, None
        elif faults.rate_limit_rate and rng.random() < faults.rate_limit_rate:
            status, retry_after = 429, faults.retry_after
        else:
            return
        if status == 429:
            raise SandboxError(429, "rate_limited", "Too many requests", retry_after=retry_after or 0)
        raise SandboxError(status, "server_error", f"Sandbox fault: {status}")


def _is_create(method: str, path: str) -> bool:
    """A /v1 POST that makes or charges something (every POST but the free estimate)."""
    return method == "POST" and path != "/v1/credits/estimate"


async def _discard(message: Message) -> None:
    """An ASGI `send` that drops the answer: a create whose response a proxy lost."""
