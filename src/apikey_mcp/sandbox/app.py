"""The sandbox gateway assembled: `Sandbox` holds the wallets, the task engine, the fault knobs and the control
plane, and `Sandbox.app` is the Starlette app that serves them, following the API-Key gateway's published
contract.

Each key has its own wallet. Creates are priced, checked against max_credits and the wallet, reserved, and run
through pending -> running -> succeeded | failed on a configurable clock (engine.py); success settles the
charge, failure refunds it, and a signed callback is POSTed when callback_url was given (callbacks.py). Results
are small real files served by the sandbox itself (routes.py). Fault knobs (latency, 5xx, 429) serve the tests
and benchmarks (faults.py). Sandbox-only extras live under /sandbox/ (control.py).

Time can belong to the caller: with `hold` set, a new task stays `pending` until it is moved on with
`POST /sandbox/tasks/{task_id}/advance` (`{"to": "running" | "succeeded" | "failed", "progress": 0.5}`),
so a test decides when a task ends instead of racing the task clock.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .callbacks import CallbackSender
from .control import ControlPlane
from .engine import FAIL_MARKER, SandboxTask, TaskEngine
from .errors import SandboxError
from .faults import Faults, FaultsMiddleware
from .routes import GatewayRoutes
from .wallets import Wallet


class Sandbox:
    """The sandbox's state and behaviour; `app` is its ASGI face."""

    def __init__(
        self,
        keys: list[str],
        *,
        credits: int = 100_000,
        task_seconds: float = 3.0,
        failure_rate: float = 0.0,
        webhook_secret: str | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
        hold: bool = False,
    ) -> None:
        self.wallets = {key: Wallet(credits) for key in keys}
        self.faults = faults or Faults()
        self.rng = random.Random(seed)  # the one seeded source of chance: task failures and random faults
        self.chat_charges: deque[tuple[str, int]] = deque(maxlen=100_000)  # (last user message, credits charged)
        self.requests: Counter[str] = Counter()  # "GET /v1/tasks/{task_id}" -> count
        self.callbacks = CallbackSender(webhook_secret or "whsec_" + secrets.token_hex(16))
        self.engine = TaskEngine(
            self.wallets, self.callbacks, task_seconds=task_seconds, failure_rate=failure_rate, hold=hold, rng=self.rng
        )
        self.control = ControlPlane(self.engine, self.wallets, self.requests)
        self.gateway_routes = GatewayRoutes(self.wallets, self.engine, self.faults, self.chat_charges)
        health = Route("/healthz", _healthy, methods=["GET"])
        self.app = Starlette(
            routes=[*self.gateway_routes.routes(), *self.control.routes(), health],
            middleware=[Middleware(FaultsMiddleware, faults=self.faults, requests=self.requests, rng=self.rng)],
            exception_handlers={
                SandboxError: lambda request, exc: exc.response(),
                ClientDisconnect: lambda request, exc: Response(status_code=499),  # the caller gave up
            },
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.engine.running():
            yield

    # The names tests and benchmarks have always used, kept on the sandbox itself.

    @property
    def hold(self) -> bool:
        """New tasks wait for /sandbox/tasks/{id}/advance instead of the clock (settable at any time)."""
        return self.engine.hold

    @hold.setter
    def hold(self, value: bool) -> None:
        self.engine.hold = value

    @property
    def tasks(self) -> dict[str, SandboxTask]:
        """Every task the gateway knows, by id (a test may delete one or put forgotten ones back)."""
        return self.engine.tasks

    @property
    def forgotten(self) -> dict[str, SandboxTask]:
        """The tasks `forget_tasks` dropped."""
        return self.engine.forgotten

    @property
    def webhook_secret(self) -> str:
        return self.callbacks.webhook_secret

    @property
    def callbacks_sent(self) -> list[dict[str, object]]:
        return self.callbacks.sent

    def forget_tasks(self) -> list[str]:
        """Fault: the gateway loses every task it has; see ControlPlane.forget_tasks."""
        return self.control.forget_tasks()

    def charged(self, key: str | None = None) -> int:
        """Credits charged for tasks that succeeded (forgotten ones included), for `key` or every key."""
        return self.control.charged(key)


async def _healthy(request: Request) -> Response:
    return PlainTextResponse("ok")


__all__ = ["FAIL_MARKER", "Faults", "Sandbox", "SandboxError", "Wallet"]
