"""Accounts: one service and task registry per principal, over the one ledger store.

Over stdio there is one principal (`--principal`, default the OS user), recorded in the local ledger file;
each run is a session whose budget is the session budget (sessions.py).
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
import time
from collections import Counter, OrderedDict
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
from .errors import AgentError
from .gateway import AuthenticationError, GatewayClient, GatewayError, NotFoundError, PermissionDeniedError
from .gateway.models import Task
from .lost import log_still_open
from .policy import Policy
from .polling import Pacer
from .service import Cache, Service
from .sessions import start_session
from .supervisor import Supervisor
from .tasks import TaskRegistry, TrackedTask, modality_of
from .windows import WindowLimit

log = logging.getLogger(__name__)
LOCAL = "local"
MAX_OWN_KEYS = 4  # per principal: each own key holds a client and its watchers
REFUSED_SECONDS, MAX_REFUSED = 60.0, 1024  # own keys the gateway refused are refused here for a minute
KEY_CHECKS_PER_MINUTE = 10  # per principal: each own key new here costs the gateway a request to check it


class TooManyKeysError(AgentError):
    pass


class KeyRefusedError(AgentError):
    """An own gateway key the gateway refused, or that could not be checked; the message says which."""


KEY_CHECK_TASK = "apikey-mcp-key-check"  # no such task: a good key gets 404, a bad one 401, and nothing is spent


async def _check_key(client: GatewayClient) -> None:
    try:
        await client.get_task(KEY_CHECK_TASK)
    except NotFoundError:
        return
    except (AuthenticationError, PermissionDeniedError) as exc:
        raise KeyRefusedError(f"The gateway refused the key in the own-key header ({exc.code}).") from None
    except GatewayError as exc:
        raise KeyRefusedError(f"Could not check the key in the own-key header ({exc.message}); try again.") from None
    raise KeyRefusedError("The gateway answered a check of the own key oddly; it was not used.")


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

    def __post_init__(self) -> None:
        self.alerts = Alerts(self.settings, self.store, clock=self.clock)
        self._services: dict[str, Service] = {}
        self._own: OrderedDict[tuple[str, str], Service] = OrderedDict()  # (principal, key digest) -> its service
        self._awaiting_key: dict[str, list[tuple[Task, Reservation]]] = {}
        self._salt = secrets.token_bytes(16)
        self._refused: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key digest -> (when, why)
        self.key_checks = WindowLimit(KEY_CHECKS_PER_MINUTE)  # per principal
        self.task_listeners: list[Callable[[str, TrackedTask], Coroutine[Any, Any, None]]] = []
        self._cache = Cache()  # models and docs, the same for every principal
        self.supervisor = Supervisor()  # every principal's watchers, saves and retries; the replica's upkeep
        self._pacer = Pacer()  # fallback polls take turns across every principal's watchers

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Accounts]:
        """Run every principal's task watchers; resume the tasks the store has open reservations for."""
        async with self.supervisor.running():
            self.supervisor.service(self.alerts.run, name="alerts")
            if not self.hosted:
                policy = Policy.default(self.settings)
                await start_session(self.store, self.local, self.settings.session_budget, policy, self.clock())
            await self._restore()
            unwatch = metrics.watch(self.store, self.task_states)
            try:
                yield self
            finally:
                unwatch()
                everyone = [*self._services.items(), *((p, s) for (p, _), s in self._own.items())]
                for principal, service in everyone:
                    if unfinished := service.registry.unfinished():
                        log.warning(
                            "%s: stopping with unfinished task(s) %s (resumed at the next start, or see "
                            "apikey-mcp admin reservations --open)",
                            principal,
                            ", ".join(unfinished),
                        )
                    await log_still_open(service.registry, f"{principal}: ")
                with anyio.CancelScope(shield=True):
                    for service in self._own.values():
                        await service.client.aclose()

    async def service(self, principal: str = LOCAL, own_key: SecretStr | None = None) -> Service:
        """The principal's service (with its own gateway key, if it brought one). A principal the store has
        never seen starts with the configured budget; a known one keeps the budget the store has."""
        if own_key is not None:
            return await self.own_key_service(principal, own_key)
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
            service = self._services.get(principal) or self._open(principal, self._ledger(principal))
        return service

    def task_states(self) -> Counter[str]:
        """How many tasks in memory are in each state (for metrics)."""
        services = [*self._services.values(), *self._own.values()]
        return Counter(str(t.task.status) for s in services for i in s.registry.ids() if (t := s.registry.get(i)))

    def principals(self) -> list[str]:
        """Every principal with a budget in memory."""
        return list(self._services)

    def owns(self, principal: str, task_id: str) -> bool:
        """Whether `task_id` is one of the principal's tasks in memory (with its key or an own one)."""
        services = [self._services.get(principal), *(s for (p, _), s in self._own.items() if p == principal)]
        return any(s is not None and s.registry.get(task_id) is not None for s in services)

    async def loads(self, principal: str, task_id: str) -> bool:
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
        for service in [*self._services.values(), *self._own.values()]:
            if (tracked := service.registry.get(task_id)) is not None:
                return service, tracked
        return None

    async def own_key_service(self, principal: str, key: SecretStr) -> Service:
        """The principal's service with its own gateway key, under its one budget. A key new here is first
        checked with a free call, so a junk key never takes one of the MAX_OWN_KEYS slots; at the limit, the
        least recently used key with no task running gives its slot up."""
        slot = (principal, hashlib.blake2b(key.get_secret_value().encode(), key=self._salt, digest_size=16).hexdigest())
        if (service := self._own.get(slot)) is not None:
            self._own.move_to_end(slot)
            return service
        if (refused := self._refused.get(slot[1])) is not None and time.monotonic() - refused[0] < REFUSED_SECONDS:
            raise KeyRefusedError(refused[1])  # the gateway is not asked again about a key it just refused
        if wait := self.key_checks.wait(principal):
            raise KeyRefusedError(
                f"Too many new own gateway keys for this principal (at most {KEY_CHECKS_PER_MINUTE} "
                f"checked a minute): try again in {int(wait + 0.999)} s."
            )
        self.key_checks.note(principal)
        client = GatewayClient(
            self.settings.base_url, key, auth_scheme=self.settings.auth_scheme, other_secrets=self.settings.secrets()
        )
        try:
            try:
                await _check_key(client)
            except KeyRefusedError as exc:
                self._refused[slot[1]] = (time.monotonic(), str(exc))
                while len(self._refused) > MAX_REFUSED:
                    self._refused.popitem(last=False)
                raise
            await self.service(principal)  # the principal's budget exists in the store
            if (service := self._own.get(slot)) is None:  # unless a concurrent request got there first
                service = self._own_slot(principal, slot, client)
                for task, reservation in self._awaiting_key.pop(principal, []):
                    await service.registry.track(task, reservation.modality, reservation, confirmed=False)
        finally:
            if service is None or service.client is not client:
                await client.aclose()
        return service

    def _own_slot(self, principal: str, slot: tuple[str, str], client: GatewayClient) -> Service:
        mine = [s for s in self._own if s[0] == principal]  # least recently used first
        if len(mine) >= MAX_OWN_KEYS:
            idle = next((s for s in mine if not self._own[s].registry.unfinished()), None)
            if idle is None:
                raise TooManyKeysError(
                    f"at most {MAX_OWN_KEYS} own gateway keys per principal, and each has a task "
                    "running: wait for one to finish"
                )
            self.supervisor.spawn(self._own.pop(idle).client.aclose, name="close an idle own-key client")
        service = self._open(principal, self._ledger(principal, own_key=True), client=client, own_key=True)
        self._own[slot] = service
        return service

    def _ledger(self, principal: str, *, own_key: bool = False) -> Ledger:
        """The principal's ledger: its reservations record the gateway they are made at, its periods follow the
        accounts' clock, and each change is told to the alert checker."""
        ledger = Ledger(self.store, principal, own_key=own_key, gateway=self.settings.base_url, clock=self.clock)
        ledger.changed = self.alerts.notice  # a reservation or a charge may cross an alert threshold
        return ledger

    def _open(
        self, principal: str, ledger: Ledger, *, client: GatewayClient | None = None, own_key: bool = False
    ) -> Service:
        """A service over `ledger`; with `client`, one that calls the gateway with the principal's own key."""
        client = client or self.client
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
        """The principal's task registry (replica mode gives one that coordinates with the fleet)."""
        return TaskRegistry(
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
            self._awaiting_key.setdefault(principal, []).append((task, reservation))
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
