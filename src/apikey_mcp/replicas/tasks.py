"""Tasks on one replica of many: one watcher per task across the fleet, and everyone else follows the row.

The replica that takes a task's lease watches it (polls the gateway, settles it) and publishes every state
it learns. Any other replica that holds the task (an agent polls it there) follows: it reads the state the
fleet recorded, wakes on the task's announcement, and re-reads the row every third of a lease anyway, since
announcements can be lost. A follower that finds the lease expired takes it over and becomes the watcher.

The registry is the plain one, given `FleetWatcher` as its watch strategy; only `refresh` differs (a
follower reads the fleet's row instead of asking the gateway). The accounts make one for each principal's
shared-key tasks (their `registry_type`); `hand_over` gives one a task whose watcher went away.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

from ..accounts import Accounts
from ..budget import Ledger, LedgerUnavailableError, Reservation
from ..gateway import GatewayClient, GatewayError, NotFoundError
from ..gateway.models import Task, TaskStatus
from ..tasks import TaskRegistry, TrackedTask, modality_of
from ..watcher import PollingWatcher
from .fleet import Fleet, SharedTask

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class FleetTaskRegistry(TaskRegistry):
    """A principal's tasks on one replica; takes TaskRegistry's arguments after the fleet (`principal` needed)."""

    def __init__(self, fleet: Fleet, client: GatewayClient, ledger: Ledger, *, principal: str, **options: Any) -> None:
        self.fleet = fleet
        self.resumed: set[str] = set()  # handed over by the fleet's scan: their state here is a placeholder
        self.leased: set[str] = set()  # watched here: their state comes from the gateway
        self.following: set[str] = set()  # watched elsewhere: their state comes from the fleet's rows
        super().__init__(client, ledger, watcher=FleetWatcher, principal=principal, **options)
        self.principal: str = principal
        self.observers.append(self._publish_soon)

    @property
    def reread_seconds(self) -> float:
        return self.fleet.lease_seconds / 3

    async def refresh(self, task_id: str) -> TrackedTask:
        """The watcher asks the gateway; anyone else reads what the fleet recorded (no gateway request)."""
        if task_id in self.leased:
            return await super().refresh(task_id)
        shared = await self.fleet.find(task_id, self.principal)
        if shared is None:
            raise NotFoundError(f"Task '{task_id}' was not created by this principal", code="task_not_found")
        self.following.add(task_id)
        try:
            tracked = self.get(task_id)
            if tracked is None:
                reservation = shared.reservation
                modality = reservation.modality if reservation and reservation.modality else modality_of(shared.task)
                return await self.track(shared.task, modality, reservation)
            await self._follow(tracked, shared)
            return tracked
        finally:
            if shared.task.is_terminal:  # nothing more to follow
                self.following.discard(task_id)

    async def reread(self, task_id: str) -> None:
        """Apply the fleet's recorded state of a task held here but watched elsewhere (after an announcement)."""
        tracked = self.get(task_id)
        if tracked is None or tracked.task.is_terminal:
            return
        shared = await self.fleet.find(task_id, self.principal)
        if shared is not None:
            await self._follow(tracked, shared)

    async def _follow(self, tracked: TrackedTask, shared: SharedTask) -> None:
        if shared.reservation is not None and shared.reservation.lost_at is not None and tracked.lost_at is None:
            tracked.reservation = shared.reservation
            await self.lose(tracked)  # the watcher elsewhere marked it lost
        await self.update(shared.task)

    def _publish_soon(self, tracked: TrackedTask) -> None:
        """Tell the fleet what this replica learnt (from a create or the gateway), not what it read back."""
        if tracked.task_id in self.following and tracked.task_id not in self.leased:
            return
        if self.supervisor is not None:
            self.spawn(self._publish, tracked.task, name=f"publish {tracked.task_id}", task=tracked.task_id)

    async def _publish(self, task: Task) -> None:
        await self.durably(f"record the state of {task.task_id}", lambda: self.fleet.publish(self.principal, task))


def fleet_registries(accounts: Accounts) -> list[FleetTaskRegistry]:
    """The registries in memory that coordinate with the fleet (own-key ones stay with this replica)."""
    return [s.registry for s in accounts.services() if isinstance(s.registry, FleetTaskRegistry)]


async def hand_over(accounts: Accounts, reservation: Reservation) -> None:
    """Watch a task whose watcher went away (its lease expired, or none was ever taken)."""
    assert reservation.task_id is not None
    registry = (await accounts.service(reservation.principal)).registry
    if not isinstance(registry, FleetTaskRegistry) or registry.get(reservation.task_id) is not None:
        return  # held here already: its follower loop claims the lease on its next round
    registry.resumed.add(reservation.task_id)
    task = Task(task_id=reservation.task_id, status=TaskStatus.PENDING)  # the watcher asks the gateway at once
    await registry.track(task, reservation.modality, reservation)


class FleetWatcher:
    """The watch strategy of a replica: take the task's lease and poll (PollingWatcher), or follow the row."""

    def __init__(self, registry: TaskRegistry) -> None:
        assert isinstance(registry, FleetTaskRegistry)
        self.registry = registry
        self.polling = PollingWatcher(registry)

    def closes(self, tracked: TrackedTask) -> bool:
        """Only the watcher closes a reservation (a callback's transaction already has): a follower's terminal
        state comes from a row recorded after the close, so it has nothing to do."""
        return tracked.task_id in self.registry.leased or tracked.task_id not in self.registry.following

    async def watch(self, tracked: TrackedTask) -> None:
        registry, task_id = self.registry, tracked.task_id
        while not tracked.task.is_terminal and tracked.lost_at is None:
            claim = await _quietly(registry.fleet.claim(task_id))
            if claim is not None:
                await self._watch_leased(tracked, fresh=claim == "new" and task_id not in registry.resumed)
                return
            registry.following.add(task_id)
            with anyio.move_on_after(registry.reread_seconds):
                await tracked.changed.wait()
            await _quietly(registry.reread(task_id))
        registry.following.discard(task_id)
        registry.resumed.discard(task_id)

    async def _watch_leased(self, tracked: TrackedTask, *, fresh: bool) -> None:
        registry, task_id = self.registry, tracked.task_id
        registry.leased.add(task_id)
        registry.following.discard(task_id)
        try:
            if not fresh:  # taken over or resumed: it may have moved on (or ended) meanwhile
                log.info("%s: watching task %s (lease taken)", registry.principal, task_id)
                await self.polling.ask(tracked)
            await self.polling.watch(tracked)
        finally:
            registry.leased.discard(task_id)
            registry.resumed.discard(task_id)
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await _quietly(registry.fleet.release(task_id))


async def _quietly(step: Awaitable[_T]) -> _T | None:
    """A fleet step that may fail while the database or the gateway is away: the caller retries next round."""
    try:
        return await step
    except (LedgerUnavailableError, GatewayError) as exc:
        log.warning("fleet step failed (%s); will retry", exc)
        return None
