"""Accounts: one service and task registry per principal, over the one ledger store.

Over stdio there is one principal (`--principal`, default the OS user), recorded in the local ledger file;
each run is a session whose budget is the session budget (sessions.py).
Hosted, each token's principal keeps its budget in the store across sessions, reconnections, restarts and
processes, and sees only its own tasks. The configured budget is given to a principal the first time it is
seen; after that only the operator changes it (`apikey-mcp admin set-budget`). On start, open reservations
tied to a task are resumed: the task is watched to its end, then settled or released.

A principal that brings its own gateway key (when the operator allows it) gets a service with a client of
its own for that key, still under the principal's one budget (own_keys.py).

Replica mode gives the accounts the kind of task registry the shared key's tasks get (`registry_type`) and
leaves resuming tasks to whichever replica takes their lease (`resume_tasks=False`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import SecretStr

from . import metrics
from .alerts import Alerts
from .budget import Ledger, LedgerStore, Reservation
from .config import Settings
from .gateway import GatewayClient, GatewayError
from .gateway.models import Task
from .lost import log_still_open
from .own_keys import OwnKeys
from .policy import Policy
from .polling import Pacer
from .service import Service
from .sessions import start_session
from .shared_cache import Cache
from .supervisor import Supervisor
from .tasks import TaskRegistry, TrackedTask, modality_of

log = logging.getLogger(__name__)
__all__ = ["LOCAL", "Accounts"]
LOCAL = "local"


@dataclass
class Accounts:
    """`hosted` accounts see only their own tasks: a task id they did not create is not found."""

    settings: Settings
    client: GatewayClient
    store: LedgerStore
    hosted: bool = False
    poll_sleep: Callable[[float], Awaitable[None]] = anyio.sleep  # the task watchers' clock (tests own it)
    poll_clock: Callable[[], float] = time.monotonic
    local: str = LOCAL  # over stdio: the one principal (the OS user, or --principal)
    clock: Callable[[], float] = time.time  # wall time, for budget periods (tests own it)
    registry_type: Callable[..., TaskRegistry] = TaskRegistry  # takes TaskRegistry's arguments; for the shared key
    resume_tasks: bool = True  # resume the open reservations' tasks at start (a replica leaves it to the lease)

    def __post_init__(self) -> None:
        self.alerts = Alerts(self.settings, self.store, clock=self.clock)
        self._services: dict[str, Service] = {}
        self.task_listeners: list[Callable[[str, TrackedTask], Coroutine[Any, Any, None]]] = []
        self._cache = Cache()  # models and docs, the same for every principal
        self.supervisor = Supervisor()  # every principal's watchers, saves and retries; the replica's upkeep
        self._pacer = Pacer()  # fallback polls take turns across every principal's watchers
        self.own_keys = OwnKeys(
            self.settings,
            self.supervisor,
            open_service=lambda principal, client: self._open(principal, client=client, own_key=True),
            ensure_principal=self.service,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Accounts]:
        """Run every principal's task watchers; resume the tasks the store has open reservations for."""
        async with self.supervisor.running():
            self.supervisor.service(self.alerts.run, name="alerts")
            if not self.hosted:
                policy = Policy.default(self.settings)
                await start_session(self.store, self.local, self.settings.session_budget, policy, self.clock())
            if self.resume_tasks:
                await self._restore()
            else:
                log.info("replica mode: unfinished tasks are resumed by whichever replica takes their lease")
            unwatch = metrics.watch(self.store, self.task_states)
            try:
                yield self
            finally:
                unwatch()
                everyone = [*self._services.items(), *self.own_keys.by_principal()]
                for principal, service in everyone:
                    if unfinished := service.registry.unfinished():
                        log.warning(
                            "%s: stopping with unfinished task(s) %s (resumed at the next start, or see "
                            "apikey-mcp admin reservations --open)",
                            principal,
                            ", ".join(unfinished),
                        )
                    await log_still_open(service.registry, f"{principal}: ")
                await self.own_keys.aclose()

    async def service(self, principal: str = LOCAL, own_key: SecretStr | None = None) -> Service:
        """The principal's service (with its own gateway key, if it brought one). A principal the store has
        never seen starts with the configured budget; a known one keeps the budget the store has."""
        if own_key is not None:
            return await self.own_keys.service(principal, own_key)
        service = self._services.get(principal)
        if service is None:
            totals, created = await self.store.ensure_principal(
                principal, self.settings.session_budget, policy=Policy.default(self.settings), now=self.clock()
            )
            if not created and totals.budget != self.settings.session_budget and self.hosted:
                log.info(
                    "%s: budget %d from the ledger (the configured %d applies to new principals only; "
                    "change it with apikey-mcp admin set-budget)",
                    principal,
                    totals.budget,
                    self.settings.session_budget,
                )
            service = self._services.get(principal) or self._open(principal)
        return service

    def services(self) -> list[Service]:
        """Every service in memory: each principal's with the shared key, then those with own keys."""
        return [*self._services.values(), *self.own_keys.services()]

    def task_states(self) -> Counter[str]:
        """How many tasks in memory are in each state (for metrics)."""
        services = self.services()
        return Counter(str(t.task.status) for s in services for i in s.registry.ids() if (t := s.registry.get(i)))

    def principals(self) -> list[str]:
        """Every principal with a budget in memory."""
        return list(self._services)

    def owns(self, principal: str, task_id: str) -> bool:
        """Whether `task_id` is one of the principal's tasks in memory (with its key or an own one)."""
        services = [self._services.get(principal), *self.own_keys.of(principal)]
        return any(s is not None and s.registry.get(task_id) is not None for s in services)

    async def owns_task(self, principal: str, task_id: str) -> bool:
        """Whether `task_id` is one of the principal's tasks: in memory, or recorded as theirs by another
        process of the same ledger (a replica), which this loads so that its news reaches them here too."""
        if self.owns(principal, task_id):
            return True
        try:
            await (await self.service(principal)).registry.refresh(task_id)
        except GatewayError:  # not theirs (NotFoundError), or not to be had now
            return False
        return self.owns(principal, task_id)

    def find_task(self, task_id: str) -> tuple[Service, TrackedTask] | None:
        """Whose task this is (for callbacks, which carry no principal)."""
        for service in self.services():
            if (tracked := service.registry.get(task_id)) is not None:
                return service, tracked
        return None

    def _ledger(self, principal: str, *, own_key: bool = False) -> Ledger:
        """The principal's ledger: its reservations record the gateway they are made at, its periods follow the
        accounts' clock, and each change is told to the alert checker."""
        ledger = Ledger(self.store, principal, own_key=own_key, gateway=self.settings.base_url, clock=self.clock)
        ledger.changed = self.alerts.notice  # a reservation or a charge may cross an alert threshold
        return ledger

    def _open(self, principal: str, *, client: GatewayClient | None = None, own_key: bool = False) -> Service:
        """The principal's service; with `client`, one that calls the gateway with the principal's own key."""
        client = client or self.client
        ledger = self._ledger(principal, own_key=own_key)
        registry = self._registry(principal, client, ledger, own_key=own_key)
        registry.start(self.supervisor)
        supervisor = self.supervisor

        def announce(tracked: TrackedTask) -> None:
            for listen in self.task_listeners:
                supervisor.spawn(
                    listen,
                    principal,
                    tracked,
                    name=f"announce {tracked.task_id}",
                    task=tracked.task_id,
                    principal=principal,
                )

        registry.observers.append(announce)
        service = Service(self.settings, client, ledger, registry, cache=self._cache, hosted=self.hosted)
        if not own_key:
            self._services[principal] = service
        return service

    def _registry(self, principal: str, client: GatewayClient, ledger: Ledger, *, own_key: bool) -> TaskRegistry:
        """The principal's task registry: of `registry_type` for the shared key (replica mode's coordinates with
        the fleet); a plain one for an own key, whose tasks stay with the process that holds the key."""
        make = TaskRegistry if own_key else self.registry_type
        return make(
            client,
            ledger,
            poll_interval=self.settings.poll_interval,
            max_poll_interval=self.settings.max_poll_interval,
            adopt_unknown=own_key or not self.hosted,
            callbacks=self.settings.public_url is not None,
            fresh_seconds=self.settings.fresh_seconds,
            sleep=self.poll_sleep,
            clock=self.poll_clock,
            pacer=self._pacer,
            retention=self.settings.task_retention_seconds,
            principal=principal,
            lost_after=self.settings.lost_after_seconds,
        )

    async def _restore(self) -> None:
        """Watch every task the store holds credits for; say which holds have no task (closeable by the operator)."""
        offset, page, elsewhere = 0, 500, 0
        mine = None if self.hosted else self.local  # over stdio: only this user's, at this gateway
        while batch := await self.store.reservations(mine, open_only=True, limit=page, offset=offset):
            offset += len(batch)
            for reservation in batch:
                if reservation.gateway not in (self.settings.base_url, *([None] if self.hosted else [])):
                    elsewhere += 1
                    continue
                await self._resume(reservation)
        if elsewhere:
            log.warning(
                "%d open reservation(s) were made at another gateway and are not resumed here: "
                "apikey-mcp admin reservations --open lists them",
                elsewhere,
            )
        if not self.hosted:
            return
        for name, totals in await self.store.principals():
            if totals.budget != self.settings.session_budget:
                log.info(
                    "%s: budget %d from the ledger, not the configured %d (which applies to new principals "
                    "only; change it with apikey-mcp admin set-budget)",
                    name,
                    totals.budget,
                    self.settings.session_budget,
                )

    async def _resume(self, reservation: Reservation) -> None:
        principal = reservation.principal
        if reservation.task_id is None:
            log.warning(
                "%s: %d credits stay reserved for '%s' (reservation %s): a server stopped while creating it, so it "
                "may exist. Its callback (if any) settles it; or the operator closes it with "
                "apikey-mcp admin close %s --charged N | --released",
                principal,
                reservation.credits,
                reservation.purpose,
                reservation.id,
                reservation.id,
            )
            return
        task = Task(task_id=reservation.task_id, status="pending")  # the watcher asks the gateway for its state
        if reservation.own_key:
            self.own_keys.await_key(principal, task, reservation)
            log.info("%s: task %s waits for the principal's own key to be resumed", principal, task.task_id)
            return
        service = await self.service(principal)
        await service.registry.track(task, reservation.modality, reservation, confirmed=False)
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
