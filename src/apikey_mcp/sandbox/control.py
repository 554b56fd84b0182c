"""The sandbox's control plane: what tests and benchmarks use to steer it and look inside, and no part of the
gateway's contract. Over HTTP under /sandbox/: move a held task on, when a task ended, a key's wallet, the
request counters; in Python: forget every task, credits charged. The fault knobs are `Faults` (faults.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..gateway.models import TaskStatus
from .engine import Step, TaskEngine
from .protocol import caller_key, json_response, read_body
from .wallets import Wallet


class Advance(BaseModel):
    """The body of POST /sandbox/tasks/{task_id}/advance."""

    model_config = ConfigDict(extra="forbid")
    to: Step = "succeeded"
    progress: float | None = Field(default=None, ge=0, le=1)


class ControlPlane:
    """The /sandbox/* controls and the Python-side ones, over the engine's tasks and the wallets."""

    def __init__(self, engine: TaskEngine, wallets: Mapping[str, Wallet], requests: Counter[str]) -> None:
        self.engine, self.wallets, self.requests = engine, wallets, requests

    def routes(self) -> list[Route]:
        return [
            Route("/sandbox/wallet", self.wallet, methods=["GET"]),
            Route("/sandbox/tasks/{task_id}/advance", self.advance, methods=["POST"]),
            Route("/sandbox/tasks/{task_id}", self.task_times, methods=["GET"]),
            Route("/sandbox/stats", self.stats, methods=["GET"]),
        ]

    async def advance(self, request: Request) -> Response:
        """Move a task on now: to `running` (with an optional `progress`), `succeeded` or `failed`."""
        entry = self.engine.owned(request.path_params["task_id"], caller_key(request, self.wallets))
        step = await read_body(request, Advance)
        return json_response(self.engine.advance(entry, step.to, step.progress))

    async def task_times(self, request: Request) -> Response:
        """When a task ended, exactly (unix seconds): not part of the gateway's contract, and not counted as a poll."""
        entry = self.engine.owned(request.path_params["task_id"], caller_key(request, self.wallets))
        return JSONResponse({"status": str(entry.task.status), "ended_at": entry.ended_at})

    async def wallet(self, request: Request) -> Response:
        wallet = self.wallets[caller_key(request, self.wallets)]
        return JSONResponse({"balance": wallet.balance, "reserved": wallet.reserved, "available": wallet.available})

    async def stats(self, request: Request) -> Response:
        caller_key(request, self.wallets)
        return JSONResponse({"requests": dict(self.requests), "tasks": len(self.engine.tasks)})

    def forget_tasks(self) -> list[str]:
        """Fault: the gateway loses every task it has (each is 404 from now on); an unfinished one's hold is
        refunded, a finished one's charge stays. Returns the ids forgotten."""
        tasks = self.engine.tasks
        for entry in tasks.values():
            if not entry.task.is_terminal:
                self.wallets[entry.key].release(entry.reserved)
        ids = list(tasks)
        self.engine.forgotten.update(tasks)
        tasks.clear()
        return ids

    def charged(self, key: str | None = None) -> int:
        """Credits charged for tasks that succeeded (forgotten ones included), for `key` or every key."""
        entries = [*self.engine.tasks.values(), *self.engine.forgotten.values()]
        return sum(e.reserved for e in entries if e.task.status == TaskStatus.SUCCEEDED and key in (None, e.key))


__all__ = ["Advance", "ControlPlane"]
