"""Accounts: one ledger, task registry and service per principal, restored from the state file if any.

Over stdio there is one principal, `local`, whose budget lives as long as the session. Hosted, each token's
principal keeps its budget across sessions, reconnections and restarts (the state file), and sees only its
own tasks. On start, unfinished tasks are resumed: watched to their end, then settled or released.

A principal that brings its own gateway key (when the operator allows it) gets a service with a client of
its own for that key, still under the principal's one budget. The key lives in memory only; tasks created
with it are resumed after a restart only when the principal brings a key again.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from pydantic import SecretStr

from .budget import Ledger, Reservation
from .config import Settings
from .gateway import GatewayClient
from .gateway.models import Task
from .service import Cache, Service
from .tasks import TaskRegistry, TrackedTask, modality_of

if TYPE_CHECKING:  # the state file (and sqlite3) is for hosting only: stdio need not import it
    from .state import SavedPrincipal, StateStore

log = logging.getLogger(__name__)
LOCAL = "local"
MAX_OWN_KEYS = 4  # per principal: each own key holds a client and its watchers


class TooManyKeysError(ValueError):
    pass


@dataclass
class Accounts:
    """`hosted` accounts see only their own tasks: a task id they did not create is not found."""

    settings: Settings
    client: GatewayClient
    store: StateStore | None = None
    hosted: bool = False
    poll_sleep: Callable[[float], Awaitable[None]] = anyio.sleep  # the task watchers' clock (tests own it)

    def __post_init__(self) -> None:
        self._services: dict[str, Service] = {}
        self._own: dict[tuple[str, str], Service] = {}  # (principal, key fingerprint) -> service with that key
        self._awaiting_key: dict[str, list[tuple[Task, str | None, Reservation | None]]] = {}
        self._salt = secrets.token_bytes(16)
        self.task_listeners: list[Callable[[str, TrackedTask], Coroutine[Any, Any, None]]] = []
        self._cache = Cache()  # models and docs, the same for every principal
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
                everyone = [*self._services.items(), *((p, s) for (p, _), s in self._own.items())]
                for principal, service in everyone:
                    if unfinished := service.registry.unfinished():
                        log.warning("%s: stopping with unfinished task(s) %s", principal, ", ".join(unfinished))
                group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    for service in self._own.values():
                        await service.client.aclose()

    def service(self, principal: str = LOCAL, own_key: SecretStr | None = None) -> Service:
        """The principal's service (with its own gateway key, if it brought one); a new principal starts with
        the configured budget."""
        if own_key is not None:
            return self._own_key_service(principal, own_key)
        service = self._services.get(principal)
        if service is None:
            service = self._open(principal, Ledger(self.settings.session_budget))
            if self.store is not None:
                self.store.record_ledger(principal, service.ledger.snapshot(), None)
        return service

    def find_task(self, task_id: str) -> tuple[Service, TrackedTask] | None:
        """Whose task this is (for callbacks, which carry no principal)."""
        for service in [*self._services.values(), *self._own.values()]:
            if (tracked := service.registry.get(task_id)) is not None:
                return service, tracked
        return None

    def _own_key_service(self, principal: str, key: SecretStr) -> Service:
        fingerprint = hashlib.blake2b(key.get_secret_value().encode(), key=self._salt, digest_size=16).hexdigest()
        service = self._own.get((principal, fingerprint))
        if service is not None:
            return service
        if sum(1 for p, _ in self._own if p == principal) >= MAX_OWN_KEYS:
            raise TooManyKeysError(f"at most {MAX_OWN_KEYS} own gateway keys per principal at a time")
        main = self.service(principal)
        client = GatewayClient(self.settings.base_url, key, auth_scheme=self.settings.auth_scheme)
        service = self._open(principal, main.ledger, client=client, own_key=True)
        self._own[(principal, fingerprint)] = service
        for task, modality, reservation in self._awaiting_key.pop(principal, []):
            service.registry.track(task, modality, reservation)  # resumed with the key the principal brought
        return service

    def _open(
        self, principal: str, ledger: Ledger, *, client: GatewayClient | None = None, own_key: bool = False
    ) -> Service:
        """A service over `ledger`; with `client`, one that calls the gateway with the principal's own key."""
        assert self._group is not None, "Accounts.running() must be entered first"
        client = client or self.client
        registry = TaskRegistry(
            client, ledger, poll_interval=self.settings.poll_interval,
            max_poll_interval=self.settings.max_poll_interval, adopt_unknown=own_key or not self.hosted,
            sleep=self.poll_sleep,
        )  # fmt: skip
        registry.start(self._group)
        group = self._group

        def announce(tracked: TrackedTask) -> None:
            for listen in self.task_listeners:
                group.start_soon(listen, principal, tracked)

        registry.observers.append(announce)
        flush = None
        if (store := self.store) is not None:
            if not own_key:  # an own-key service shares the principal's ledger, already recorded
                ledger.observers.append(lambda snapshot, changed: store.record_ledger(principal, snapshot, changed))
            registry.observers.append(
                lambda t: store.record_task(principal, t.task, t.modality, t.reservation, own_key=own_key)
            )
            flush = store.flush
        service = Service(self.settings, client, ledger, registry, cache=self._cache, flush=flush)
        if not own_key:
            self._services[principal] = service
        return service

    def _restore(self, principal: str, saved: SavedPrincipal) -> None:
        ledger = Ledger(saved.budget, spent=saved.spent, open=tuple(saved.reservations))
        service = self._open(principal, ledger)
        by_id = {r.id: r for r in saved.reservations}
        for task in saved.unfinished:
            reservation = by_id.pop(task.reservation_id, None) if task.reservation_id else None
            if task.own_key:
                self._awaiting_key.setdefault(principal, []).append((task.task, task.modality, reservation))
                log.info("%s: task %s waits for the principal's own key to be resumed", principal, task.task.task_id)
                continue
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

    def adopt_created(self, reservation_id: str, task: Task) -> tuple[Service, TrackedTask] | None:
        """A callback for a create whose answer was lost (the server died mid-create): tie it up now."""
        for principal, service in self._services.items():
            for reservation in service.ledger.snapshot().open:
                if reservation.id == reservation_id and reservation.task_id is None:
                    log.info("%s: recovered task %s from its callback", principal, task.task_id)
                    return service, service.registry.track(task, modality_of(task), reservation)
        return None
