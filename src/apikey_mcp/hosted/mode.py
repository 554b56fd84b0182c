"""How this process hosts: alone (`Standalone`), or as one replica of many on a shared PostgreSQL ledger
(`Replica`, in replicas/mode.py). The app factory asks its mode for every piece that differs between the two,
so it chooses replica mode in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from mcp.server.request_state import RequestStateSecurity

from ..accounts import Accounts
from ..gateway.models import Task
from .callbacks import Outcome, apply_here
from .updates import ResourceUpdates


class HostingMode(Protocol):
    """What serving alone and serving as one of many replicas do differently."""

    @property
    def accounts(self) -> Accounts:
        """Every principal's services and task registries."""
        ...

    @property
    def request_state_security(self) -> RequestStateSecurity | None:
        """The seal of request state every process shares (None: the SDK's own, for one process)."""
        ...

    @property
    def stateless(self) -> bool:
        """Whether Streamable HTTP keeps no protocol session in this process."""
        ...

    @property
    def serves_sse(self) -> bool:
        """Whether SSE is served (its session lives in one process)."""
        ...

    @property
    def listener(self) -> Callable[[], bool] | None:
        """Readiness's extra check: whether the fleet's notification listener is connected (None: none)."""
        ...

    def tell(self, updates: ResourceUpdates) -> None:
        """Send the news of every task to subscribed clients through `updates`."""
        ...

    async def apply_callback(self, task: Task, signature: str, reservation_id: str | None) -> Outcome:
        """Do what a verified gateway callback asks, once."""
        ...

    def running(self) -> AbstractAsyncContextManager[object]:
        """The mode's background work, entered once the accounts run."""
        ...


class Standalone:
    """One process serving alone: SSE and stateful Streamable HTTP, callbacks applied here."""

    request_state_security: RequestStateSecurity | None = None
    stateless = False
    serves_sse = True
    listener: Callable[[], bool] | None = None

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def tell(self, updates: ResourceUpdates) -> None:
        self.accounts.task_listeners.append(updates.task_changed)

    async def apply_callback(self, task: Task, signature: str, reservation_id: str | None) -> Outcome:
        return await apply_here(self.accounts, task, signature, reservation_id)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield
