"""Accounts: one ledger, task registry and service per principal, restored from the state file if any.

Over stdio there is one principal, `local`, whose budget lives as long as the session. Hosted, each token's
principal keeps its budget across sessions, reconnections and restarts (the state file), and sees only its
own tasks. On start, unfinished tasks are resumed: watched to their end, then settled or released.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc

from .budget import Ledger
from .config import Settings
from .gateway import GatewayClient
from .gateway.models import Task
from .service import Service
from .state import SavedPrincipal, StateStore
from .tasks import TaskRegistry, TrackedTask, modality_of

log = logging.getLogger(__name__)
LOCAL = "local"


@dataclass
class Accounts:
    """`hosted` accounts see only their own tasks: a task id they did not create is not found."""

    settings: Settings
    client: GatewayClient
    store: StateStore | None = None
    hosted: bool = False

    def __post_init__(self) -> None:
        self._services: dict[str, Service] = {}
        self.task_listeners: list[Callable[[str, TrackedTask], Awaitable[None]]] = []
        self._cache: dict[str, tuple[float, object]] = {}  # models and docs, the same for every principal
        self._group: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self, *, ledger: Ledger | None = None) -> AsyncIterator[Accounts]:
        """Run every principal's task watchers; resume what the state file left unfinished."""
        async with anyio.create_task_group() as group:
            self._group = group
            if ledger is not None:
                self._open(LOCAL, ledger)
            if self.store is not None:
                for principal, saved in (await self.store.load_async()).items():
                    self._restore(principal, saved)
            try:
                yield self
            finally:
                for principal, service in self._services.items():
                    if unfinished := service.registry.unfinished():
                        log.warning("%s: stopping with unfinished task(s) %s", principal, ", ".join(unfinished))
                group.cancel_scope.cancel()

    def service(self, principal: str = LOCAL) -> Service:
        """The principal's service; a new principal starts with the configured budget."""
        service = self._services.get(principal)
        if service is None:
            service = self._open(principal, Ledger(self.settings.session_budget))
            if self.store is not None:
                self.store.record_ledger(principal, service.ledger.snapshot(), None)
        return service

    def find_task(self, task_id: str) -> tuple[str, TrackedTask] | None:
        """Which principal's task this is (for callbacks, which carry no principal)."""
        for principal, service in self._services.items():
            if (tracked := service.registry.get(task_id)) is not None:
                return principal, tracked
        return None

    def _open(self, principal: str, ledger: Ledger) -> Service:
        assert self._group is not None, "Accounts.running() must be entered first"
        registry = TaskRegistry(
            self.client, ledger, poll_interval=self.settings.poll_interval,
            max_poll_interval=self.settings.max_poll_interval, adopt_unknown=not self.hosted,
        )  # fmt: skip
        registry.start(self._group)
        group = self._group
        registry.observers.append(
            lambda tracked: [group.start_soon(listen, principal, tracked) for listen in self.task_listeners]
        )
        flush = None
        if (store := self.store) is not None:
            ledger.observers.append(lambda snapshot, reservation: store.record_ledger(principal, snapshot, reservation))
            registry.observers.append(lambda t: store.record_task(principal, t.task, t.modality, t.reservation))
            flush = store.flush
        service = Service(self.settings, self.client, ledger, registry, cache=self._cache, flush=flush)
        self._services[principal] = service
        return service

    def _restore(self, principal: str, saved: SavedPrincipal) -> None:
        ledger = Ledger(saved.budget, spent=saved.spent, open=tuple(saved.reservations))
        service = self._open(principal, ledger)
        by_id = {r.id: r for r in saved.reservations}
        for task in saved.unfinished:
            reservation = by_id.pop(task.reservation_id, None) if task.reservation_id else None
            service.registry.track(task.task, task.modality, reservation)
            log.info("%s: resumed task %s", principal, task.task.task_id)
        for reservation in by_id.values():
            if reservation.task_id is None:
                log.warning(
                    "%s: %d credits stay reserved for '%s': the server stopped while creating it, so it may "
                    "exist; its callback (if any) will settle it", principal, reservation.credits, reservation.purpose,
                )  # fmt: skip
        snapshot = ledger.snapshot()
        log.info("%s: restored budget %d, spent %d, reserved %d", principal, snapshot.budget, snapshot.spent,
                 snapshot.reserved)  # fmt: skip

    def adopt_created(self, reservation_id: str, task: Task) -> tuple[str, TrackedTask] | None:
        """A callback for a create whose answer was lost (the server died mid-create): tie it up now."""
        for principal, service in self._services.items():
            for reservation in service.ledger.snapshot().open:
                if reservation.id == reservation_id and reservation.task_id is None:
                    log.info("%s: recovered task %s from its callback", principal, task.task_id)
                    return principal, service.registry.track(task, modality_of(task), reservation)
        return None
