"""Fault knobs for reliability tests and benchmarks, and the middleware that applies them to /v1/* requests.

It also counts every request by route, so tests can check how often the gateway was asked (say, for a
task's status while a callback should have made polling unnecessary).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import SandboxError

if TYPE_CHECKING:
    from .app import Sandbox


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
    # Requests of a route ("POST /v1/videos") wait, counted but unanswered, until their gate is set: a test
    # holds a request in flight for as long as it needs, with no timer to race.
    gates: dict[str, threading.Event] = field(default_factory=dict)


_GROUPED = {"/v1/tasks/": "/v1/tasks/{task_id}", "/sandbox/files/": "/sandbox/files/{file}"}


class FaultsMiddleware:
    """Counts requests by route and applies the fault knobs to /v1/*; errors become the gateway envelope."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app, self.sandbox = app, sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = next((label for prefix, label in _GROUPED.items() if path.startswith(prefix)), path)
        label = f"{scope['method']} {route}"
        self.sandbox.requests[label] += 1
        if (gate := self.sandbox.faults.gates.get(label)) is not None:
            while not gate.is_set():  # noqa: ASYNC110 (a threading.Event, set from the test's thread)
                await anyio.sleep(0.002)
        if path.startswith("/v1/"):
            try:
                await self._faults()
            except SandboxError as exc:
                await exc.response()(scope, receive, send)
                return
            faults = self.sandbox.faults
            if scope["method"] == "POST" and path != "/v1/credits/estimate":
                if faults.refused_creates:
                    status = faults.refused_creates.popleft()
                    await SandboxError(status, "server_error", f"Sandbox fault: {status}").response()(
                        scope, receive, send
                    )
                    return
                if faults.lost_creates:
                    status = faults.lost_creates.popleft()

                    async def swallow(message: object) -> None:
                        pass

                    await self.app(scope, receive, swallow)  # the work is done, its answer lost
                    await PlainTextResponse("Gateway Timeout", status_code=status)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _faults(self) -> None:
        faults, rng = self.sandbox.faults, self.sandbox._rng
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
