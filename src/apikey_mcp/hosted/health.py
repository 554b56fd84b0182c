"""Honest health: `/healthz` says the process is alive and its event loop answers; `/readyz` says whether it
can do its work now.

`/readyz` answers 200 only when the ledger answers within PROBE_SECONDS, the supervisor of background work
runs, and (in replica mode) the fleet's notification listener is connected; otherwise 503. A balancer
routes on `/readyz`; an orchestrator restarts on `/healthz` (a database outage is no reason to restart).
Both answer `{"ready": bool, "checks": {"ledger": "ok" | reason, "supervisor": ..., "listener": ...}}`;
`/healthz` reports the last readiness probe's checks without probing again.

The ledger probe is one cheap read, run as a supervised job of its own: a store that hangs cannot hold the
probe past its second (PostgreSQL operations finish even when cancelled), and at most one probe is in
flight at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..budget import LedgerStore
from ..supervisor import Supervisor

log = logging.getLogger(__name__)
PROBE_SECONDS = 1.0
_PROBE_ID = "apikey-mcp-readiness-probe"  # no such reservation: the store answers None


class Health:
    def __init__(self, store: LedgerStore, supervisor: Supervisor, listener: Callable[[], bool] | None = None) -> None:
        """`listener` says whether the replica's listener is connected (None: not a replica)."""
        self.store = store
        self.supervisor = supervisor
        self.listener = listener
        self._probe: anyio.Event | None = None  # set when the probe in flight has an answer
        self._ledger = "not checked yet"
        self.last: dict[str, str] = {}

    async def _ask_ledger(self, done: anyio.Event) -> None:
        try:
            await self.store.reservation(_PROBE_ID)
            self._ledger = "ok"
        except Exception as exc:
            self._ledger = f"unavailable: {exc}"
        finally:
            done.set()
            self._probe = None

    async def ledger(self) -> str:
        if not self.supervisor.alive:
            return "not checked: the supervisor is not running"
        if self._probe is None:
            self._probe = anyio.Event()
            self.supervisor.spawn(self._ask_ledger, self._probe, name="readiness probe")
        with anyio.move_on_after(PROBE_SECONDS):
            await self._probe.wait()
            return self._ledger
        return f"no answer within {PROBE_SECONDS:g} s"

    async def checks(self) -> dict[str, str]:
        checks = {"ledger": await self.ledger(), "supervisor": "ok" if self.supervisor.alive else "not running"}
        if self.listener is not None:
            checks["listener"] = "ok" if self.listener() else "not connected"
        self.last = checks
        return checks

    async def readyz(self, request: Request) -> JSONResponse:
        checks = await self.checks()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def healthz(self, request: Request) -> JSONResponse:
        """Alive: this answer itself shows the loop runs. Readiness as last probed, without a new probe."""
        checks = dict(self.last) or {"ledger": "not checked yet"}
        checks["supervisor"] = "ok" if self.supervisor.alive else "not running"
        if self.listener is not None:
            checks["listener"] = "ok" if self.listener() else "not connected"
        ready = bool(self.last) and all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks, "alive": True})
