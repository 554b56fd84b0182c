"""This process as one replica of many: when replica mode applies, what it refuses, and the upkeep it runs
(hearing the fleet's announcements, renewing leases, taking over orphaned tasks)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from mcp.server.request_state import RequestStateSecurity
from mcp.shared.subscriptions import ResourceUpdated
from starlette.responses import Response

from ..accounts import Accounts
from ..budget import Ledger, LedgerStore, LedgerUnavailableError, Reservation
from ..config import Settings
from ..errors import ConfigError
from ..gateway import GatewayClient, webhooks
from ..gateway.models import Task, TaskStatus
from ..hosted.callbacks import CallbackReceiver, _refuse
from ..hosted.updates import ResourceUpdates, task_uri
from ..stores.fleet import Fleet
from ..tasks import TaskRegistry
from .tasks import FleetTaskRegistry

log = logging.getLogger(__name__)
MIN_KEY_LENGTH = 32


def replica_mode(settings: Settings) -> bool:
    """Hosted on a PostgreSQL ledger: other replicas may share it, so behave as one of many."""
    return settings.transport != "stdio" and settings.database_url is not None


def check(settings: Settings) -> None:
    """Refuse what cannot work across replicas; say what is not served."""
    if settings.transport == "sse":
        raise ConfigError(
            "SSE keeps each session in one process's memory, so it cannot run as one of many replicas on a "
            "PostgreSQL ledger: use --transport streamable-http (clients connect to /mcp)."
        )
    request_state_security(settings)
    if settings.transport == "http":
        log.warning(
            "replica mode (PostgreSQL ledger): serving Streamable HTTP at /mcp only, stateless; /sse is not "
            "served, since an SSE session lives in one process"
        )


def request_state_security(settings: Settings) -> RequestStateSecurity:
    """The shared seal for request state; refuses to start without a key every replica can share."""
    key = settings.request_state_key.get_secret_value() if settings.request_state_key else ""
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"APIKEY_REQUEST_STATE_KEY must be set (at least {MIN_KEY_LENGTH} characters, the same on every replica) "
            "when the ledger is PostgreSQL: e.g. APIKEY_REQUEST_STATE_KEY=$(openssl rand -hex 32)"
        )
    return RequestStateSecurity(keys=[key])


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class FleetAccounts(Accounts):
    """Accounts whose task registries coordinate through the fleet's tables."""

    fleet: Fleet | None = None

    def _registry(self, principal: str, client: GatewayClient, ledger: Ledger, *, own_key: bool) -> TaskRegistry:
        """Tasks made with a client's own key stay with the replica that holds the key (in memory only)."""
        assert self.fleet is not None
        if own_key:
            return super()._registry(principal, client, ledger, own_key=own_key)
        return FleetTaskRegistry(
            self.fleet,
            principal,
            client,
            ledger,
            poll_interval=self.settings.poll_interval,
            max_poll_interval=self.settings.max_poll_interval,
            adopt_unknown=False,
            callbacks=self.settings.public_url is not None,
            fresh_seconds=self.settings.fresh_seconds,
            sleep=self.poll_sleep,
            clock=self.poll_clock,
            pacer=self._pacer,
            retention=self.settings.task_retention_seconds,
            lost_after=self.settings.lost_after_seconds,
        )

    async def _restore(self) -> None:
        log.info("replica mode: unfinished tasks are resumed by whichever replica takes their lease")

    def registries(self) -> list[FleetTaskRegistry]:
        services = [*self._services.values(), *self._own.values()]
        return [s.registry for s in services if isinstance(s.registry, FleetTaskRegistry)]

    async def hand_over(self, reservation: Reservation) -> None:
        """Watch a task whose watcher went away (its lease expired, or none was ever taken)."""
        assert reservation.task_id is not None
        registry = (await self.service(reservation.principal)).registry
        if not isinstance(registry, FleetTaskRegistry) or registry.get(reservation.task_id) is not None:
            return  # held here already: its follower loop claims the lease on its next round
        registry.resumed.add(reservation.task_id)
        task = Task(task_id=reservation.task_id, status=TaskStatus.PENDING)  # the watcher asks the gateway at once
        await registry.track(task, reservation.modality, reservation)


class FleetCallbackReceiver(CallbackReceiver):
    """Any replica takes any callback: de-duplicated, recorded and settled in one transaction, then announced."""

    def __init__(self, fleet: Fleet, accounts: Accounts, secret: str, *, max_bytes: int) -> None:
        super().__init__(accounts, secret, max_bytes=max_bytes)
        self.fleet = fleet

    async def accept(self, task: Task, signature: str, reservation_id: str | None) -> Response:
        keep = 2 * webhooks.DEFAULT_TOLERANCE
        try:
            outcome = await self.fleet.settle_callback(signature, keep, task, reservation_id)
        except LedgerUnavailableError as exc:  # the gateway retries a 5xx; the task's watcher settles it anyway
            log.error("could not record the callback for task %s: %s", task.task_id, exc)
            return _refuse(503, "the ledger cannot record this callback now; retry later")
        if outcome == "replay":
            log.warning("rejected a replayed callback for task %s", task.task_id)
            return _refuse(409, "this callback was already received")
        if outcome == "unknown":
            return _refuse(404, f"no task '{task.task_id}' here")
        log.info("callback: task %s is %s (recorded for the fleet)", task.task_id, task.status)
        if task.is_terminal:  # its charge may cross an alert threshold: the checker hears of its owner
            try:
                if (shared := await self.fleet.find(task.task_id)) is not None:
                    self.accounts.alerts.notice(shared.principal)
            except LedgerUnavailableError:  # the owner's next reservation checks again
                pass
        return Response(status_code=204)


class Replica:
    """This process as one replica: hears the fleet's announcements, renews its leases, takes over orphans."""

    def __init__(self, accounts: FleetAccounts, fleet: Fleet, updates: ResourceUpdates, settings: Settings) -> None:
        self.accounts = accounts
        self.fleet = fleet
        self.updates = updates
        self.security = request_state_security(settings)

    @classmethod
    def configure(
        cls, settings: Settings, client: GatewayClient, store: LedgerStore, database_url: str, updates: ResourceUpdates
    ) -> Replica:
        """The fleet-aware accounts and upkeep of one replica; ConfigError when settings forbid it."""
        from ..stores.postgres import PostgresLedgerStore

        check(settings)
        assert isinstance(store, PostgresLedgerStore)
        fleet = Fleet(store, database_url, replica_name(), lease_seconds=settings.lease_seconds)
        accounts = FleetAccounts(settings, client, store, hosted=True, fleet=fleet)
        return cls(accounts, fleet, updates, settings)

    def callback_receiver(self, secret: str, *, max_bytes: int) -> FleetCallbackReceiver:
        return FleetCallbackReceiver(self.fleet, self.accounts, secret, max_bytes=max_bytes)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Replica]:
        await self.fleet.open()
        supervisor = self.accounts.supervisor  # entered before this (accounts.running())
        supervisor.service(self.fleet.listen, self._announced, self._reconnected, name="listener")
        supervisor.service(self._maintain, name="upkeep")
        log.info(
            "replica %s: stateless Streamable HTTP at /mcp (no SSE); task leases of %g s, taken over "
            "within %g s of a replica's death",
            self.fleet.owner,
            self.fleet.lease_seconds,
            self.fleet.lease_seconds * 4 / 3,
        )
        yield self

    async def _announced(self, task_id: str) -> None:
        held = False
        for registry in self.accounts.registries():
            if registry.get(task_id) is not None:
                held = True
                await registry.reread(task_id)  # wakes its poll_task waiters and subscribers (filtered by owner)
        if not held:  # no one here holds the task; a 2026-07-28 listener here may still want the news
            await self.updates.bus.publish(ResourceUpdated(uri=task_uri(task_id)))

    async def _reconnected(self) -> None:
        """Announcements sent while the listener was away are lost: re-read every task waited on here."""
        for registry in self.accounts.registries():
            for task_id in registry.unfinished():
                await registry.reread(task_id)

    async def _maintain(self) -> None:
        """Renew this replica's leases and take over every orphan, a third of a lease apart."""
        while True:
            try:
                await self.fleet.renew()
                await self._take_orphans()
            except LedgerUnavailableError as exc:
                log.warning("replica upkeep failed (%s); retrying", exc)
            await anyio.sleep(self.fleet.lease_seconds / 3)

    async def _take_orphans(self) -> None:
        """Page through every orphan (lost tasks are not orphans), so none waits behind any number of others."""
        after = (float("-inf"), "")
        while page := await self.fleet.orphans(after=after):
            for reservation in page:
                await self.accounts.hand_over(reservation)
            after = (page[-1].created_at, page[-1].id)
