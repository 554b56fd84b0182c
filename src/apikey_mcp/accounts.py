"""Accounts: one service and task registry per principal, over the one ledger store.

Over stdio there is one principal, `local`, whose budget lives as long as the session (a memory store).
Hosted, each token's principal keeps its budget in the store across sessions, reconnections, restarts and
processes, and sees only its own tasks. The configured budget is given to a principal the first time it is
seen; after that only the operator changes it (`apikey-mcp admin set-budget`). On start, open reservations
tied to a task are resumed: the task is watched to its end, then settled or released.

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
from typing import Any

import anyio
import anyio.abc
from pydantic import SecretStr

from .budget import Ledger, LedgerStore, Reservation
from .config import Settings
from .gateway import GatewayClient
from .gateway.models import Task
from .service import Cache, Service
from .tasks import TaskRegistry, TrackedTask, modality_of

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
    store: LedgerStore
    hosted: bool = False
    poll_sleep: Callable[[float], Awaitable[None]] = anyio.sleep  # the task watchers' clock (tests own it)

    def __post_init__(self) -> None:
        self._services: dict[str, Service] = {}
        self._own: dict[tuple[str, str], Service] = {}  # (principal, key fingerprint) -> service with that key
        self._awaiting_key: dict[str, list[tuple[Task, Reservation]]] = {}
        self._salt = secrets.token_bytes(16)
        self.task_listeners: list[Callable[[str, TrackedTask], Coroutine[Any, Any, None]]] = []
        self._cache = Cache()  # models and docs, the same for every principal
        self._group: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Accounts]:
        """Run every principal's task watchers; resume the tasks the store has open reservations for."""
        async with anyio.create_task_group() as group:
            self._group = group
            if self.hosted:
                await self._restore()
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

    async def service(self, principal: str = LOCAL, own_key: SecretStr | None = None) -> Service:
        """The principal's service (with its own gateway key, if it brought one). A principal the store has
        never seen starts with the configured budget; a known one keeps the budget the store has."""
        if own_key is not None:
            return await self._own_key_service(principal, own_key)
        service = self._services.get(principal)
        if service is None:
            totals, created = await self.store.ensure_principal(principal, self.settings.session_budget)
            if not created and totals.budget != self.settings.session_budget and self.hosted:
                log.info("%s: budget %d from the ledger (the configured %d applies to new principals only; "
                         "change it with apikey-mcp admin set-budget)", principal, totals.budget,
                         self.settings.session_budget)  # fmt: skip
            service = self._services.get(principal) or self._open(principal, Ledger(self.store, principal))
        return service

    def find_task(self, task_id: str) -> tuple[Service, TrackedTask] | None:
        """Whose task this is (for callbacks, which carry no principal)."""
        for service in [*self._services.values(), *self._own.values()]:
            if (tracked := service.registry.get(task_id)) is not None:
                return service, tracked
        return None

    async def _own_key_service(self, principal: str, key: SecretStr) -> Service:
        fingerprint = hashlib.blake2b(key.get_secret_value().encode(), key=self._salt, digest_size=16).hexdigest()
        service = self._own.get((principal, fingerprint))
        if service is not None:
            return service
        if sum(1 for p, _ in self._own if p == principal) >= MAX_OWN_KEYS:
            raise TooManyKeysError(f"at most {MAX_OWN_KEYS} own gateway keys per principal at a time")
        await self.service(principal)  # the principal's budget exists in the store
        if (service := self._own.get((principal, fingerprint))) is not None:
            return service
        client = GatewayClient(self.settings.base_url, key, auth_scheme=self.settings.auth_scheme)
        service = self._open(principal, Ledger(self.store, principal, own_key=True), client=client, own_key=True)
        self._own[(principal, fingerprint)] = service
        for task, reservation in self._awaiting_key.pop(principal, []):
            await service.registry.track(task, reservation.modality, reservation)  # resumed with the key brought
        return service

    def _open(
        self, principal: str, ledger: Ledger, *, client: GatewayClient | None = None, own_key: bool = False
    ) -> Service:
        """A service over `ledger`; with `client`, one that calls the gateway with the principal's own key."""
        assert self._group is not None, "Accounts.running() must be entered first"
        client = client or self.client
        registry = self._registry(principal, client, ledger, own_key=own_key)
        registry.start(self._group)
        group = self._group

        def announce(tracked: TrackedTask) -> None:
            for listen in self.task_listeners:
                group.start_soon(listen, principal, tracked)

        registry.observers.append(announce)
        service = Service(self.settings, client, ledger, registry, cache=self._cache, hosted=self.hosted)
        if not own_key:
            self._services[principal] = service
        return service

    def _registry(self, principal: str, client: GatewayClient, ledger: Ledger, *, own_key: bool) -> TaskRegistry:
        """The principal's task registry (replica mode gives one that coordinates with the fleet)."""
        return TaskRegistry(
            client, ledger, poll_interval=self.settings.poll_interval,
            max_poll_interval=self.settings.max_poll_interval, adopt_unknown=own_key or not self.hosted,
            sleep=self.poll_sleep,
        )  # fmt: skip

    async def _restore(self) -> None:
        """Watch every task the store holds credits for; say which holds have no task (closeable by the operator)."""
        offset, page = 0, 500
        while batch := await self.store.reservations(open_only=True, limit=page, offset=offset):
            offset += len(batch)
            for reservation in batch:
                await self._resume(reservation)
        for name, totals in await self.store.principals():
            if totals.budget != self.settings.session_budget:
                log.info("%s: budget %d from the ledger, not the configured %d (which applies to new principals "
                         "only; change it with apikey-mcp admin set-budget)", name, totals.budget,
                         self.settings.session_budget)  # fmt: skip

    async def _resume(self, reservation: Reservation) -> None:
        principal = reservation.principal
        if reservation.task_id is None:
            log.warning(
                "%s: %d credits stay reserved for '%s' (reservation %s): a server stopped while creating it, so it "
                "may exist. Its callback (if any) settles it; or the operator closes it with "
                "apikey-mcp admin close %s --charged N | --released",
                principal, reservation.credits, reservation.purpose, reservation.id, reservation.id,
            )  # fmt: skip
            return
        task = Task(task_id=reservation.task_id, status="pending")  # the watcher asks the gateway for its state
        if reservation.own_key:
            self._awaiting_key.setdefault(principal, []).append((task, reservation))
            log.info("%s: task %s waits for the principal's own key to be resumed", principal, task.task_id)
            return
        service = await self.service(principal)
        await service.registry.track(task, reservation.modality, reservation)
        log.info("%s: resumed task %s", principal, task.task_id)

    async def adopt_created(self, reservation_id: str, task: Task) -> tuple[Service, TrackedTask] | None:
        """A callback for a create whose answer was lost (a server died mid-create), or made by another
        process on the same store: tie it up here."""
        reservation = await self.store.reservation(reservation_id)
        if reservation is None or reservation.state != "reserved" or reservation.task_id not in (None, task.task_id):
            return None
        if reservation.own_key:
            return None  # resumed when the principal brings its key
        service = await self.service(reservation.principal)
        log.info("%s: recovered task %s from its callback", reservation.principal, task.task_id)
        return service, await service.registry.track(task, reservation.modality or modality_of(task), reservation)
