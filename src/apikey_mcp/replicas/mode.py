"""This process as one replica of many: when replica mode applies, what it refuses, and the upkeep it runs
(hearing the fleet's announcements, renewing leases, taking over orphaned tasks)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import anyio
from mcp.server.request_state import RequestStateSecurity

from ..accounts import Accounts
from ..budget import LedgerStore, LedgerUnavailableError
from ..config import Settings
from ..errors import ConfigError
from ..gateway import GatewayClient
from ..gateway.models import Task
from .callbacks import apply_for_fleet
from .fleet import Fleet
from .tasks import FleetTaskRegistry, fleet_registries, hand_over

if TYPE_CHECKING:
    from ..hosted.callbacks import Outcome
    from ..hosted.updates import ResourceUpdates

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


class Replica:
    """This process as one replica (the hosted app's mode in replica mode): stateless Streamable HTTP, no SSE,
    request state sealed with the shared key; it hears the fleet's announcements, renews its leases and takes
    over orphans."""

    stateless = True
    serves_sse = False

    def __init__(self, accounts: Accounts, fleet: Fleet, settings: Settings) -> None:
        self.accounts = accounts
        self.fleet = fleet
        self.request_state_security: RequestStateSecurity | None = request_state_security(settings)
        self.updates: ResourceUpdates | None = None  # told of tasks no registry here holds (`tell`)

    @classmethod
    def configure(cls, settings: Settings, client: GatewayClient, store: LedgerStore, database_url: str) -> Replica:
        """The fleet-aware accounts and upkeep of one replica; ConfigError when settings forbid it."""
        from ..stores.postgres import PostgresLedgerStore

        check(settings)
        assert isinstance(store, PostgresLedgerStore)
        fleet = Fleet(store, database_url, replica_name(), lease_seconds=settings.lease_seconds)
        registry_type = partial(FleetTaskRegistry, fleet)
        accounts = Accounts(settings, client, store, hosted=True, registry_type=registry_type, resume_tasks=False)
        return cls(accounts, fleet, settings)

    @property
    def listener(self) -> Callable[[], bool]:
        return lambda: self.fleet.connected

    def tell(self, updates: ResourceUpdates) -> None:
        self.updates = updates
        self.accounts.task_listeners.append(updates.task_changed)

    async def apply_callback(self, task: Task, signature: str, reservation_id: str | None) -> Outcome:
        return await apply_for_fleet(self.fleet, self.accounts, task, signature, reservation_id)

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
        for registry in fleet_registries(self.accounts):
            if registry.get(task_id) is not None:
                held = True
                await registry.reread(task_id)  # wakes its poll_task waiters and subscribers (filtered by owner)
        if not held and self.updates is not None:  # no one here holds it; a 2026-07-28 listener may want the news
            await self.updates.announce(task_id)

    async def _reconnected(self) -> None:
        """Announcements sent while the listener was away are lost: re-read every task waited on here."""
        for registry in fleet_registries(self.accounts):
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
                await hand_over(self.accounts, reservation)
            after = (page[-1].created_at, page[-1].id)
