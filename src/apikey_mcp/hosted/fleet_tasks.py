"""Tasks on one replica of many: one watcher per task across the fleet, and everyone else follows the row.

The replica that takes a task's lease watches it (polls the gateway, settles it) and publishes every state
it learns. Any other replica that holds the task (an agent polls it there) follows: it reads the state the
fleet recorded, wakes on the task's announcement, and re-reads the row every third of a lease anyway, since
announcements can be lost. A follower that finds the lease expired takes it over and becomes the watcher.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

from ..budget import LedgerUnavailableError
from ..gateway import GatewayError, NotFoundError
from ..gateway.models import Task
from ..stores.fleet import Fleet
from ..tasks import TaskRegistry, TrackedTask, modality_of

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class FleetTaskRegistry(TaskRegistry):
    def __init__(self, fleet: Fleet, principal: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fleet = fleet
        self.principal = principal
        self.resumed: set[str] = set()  # handed over by the fleet's scan: their state here is a placeholder
        self._leased: set[str] = set()  # watched here: their state comes from the gateway
        self._following: set[str] = set()  # watched elsewhere: their state comes from the fleet's rows
        self.observers.append(self._publish_soon)

    @property
    def reread_seconds(self) -> float:
        return self.fleet.lease_seconds / 3

    async def refresh(self, task_id: str) -> TrackedTask:
        """The watcher asks the gateway; anyone else reads what the fleet recorded (no gateway request)."""
        if task_id in self._leased:
            return await super().refresh(task_id)
        shared = await self.fleet.find(task_id, self.principal)
        if shared is None:
            raise NotFoundError(f"Task '{task_id}' was not created by this principal", code="task_not_found")
        self._following.add(task_id)
        try:
            tracked = self.get(task_id)
            if tracked is None:
                reservation = shared.reservation
                modality = reservation.modality if reservation and reservation.modality else modality_of(shared.task)
                return await self.track(shared.task, modality, reservation)
            await self.update(shared.task)
            return tracked
        finally:
            if shared.task.is_terminal:  # nothing more to follow
                self._following.discard(task_id)

    async def reread(self, task_id: str) -> None:
        """Apply the fleet's recorded state of a task held here but watched elsewhere (after an announcement)."""
        tracked = self.get(task_id)
        if tracked is None or tracked.task.is_terminal:
            return
        shared = await self.fleet.find(task_id, self.principal)
        if shared is not None:
            await self.update(shared.task)

    async def _close(self, tracked: TrackedTask, task: Task) -> None:
        """Only the watcher closes a reservation (a callback's transaction already has): a follower's terminal
        state comes from a row recorded after the close, so it has nothing to do."""
        if tracked.task_id in self._following and tracked.task_id not in self._leased:
            return
        await super()._close(tracked, task)

    async def _watch(self, tracked: TrackedTask) -> None:
        task_id = tracked.task_id
        while not tracked.task.is_terminal:
            claim = await _quietly(self.fleet.claim(task_id))
            if claim is not None:
                await self._watch_leased(tracked, fresh=claim == "new" and task_id not in self.resumed)
                return
            self._following.add(task_id)
            with anyio.move_on_after(self.reread_seconds):
                await tracked.changed.wait()
            await _quietly(self.reread(task_id))
        self._following.discard(task_id)
        self.resumed.discard(task_id)

    async def _watch_leased(self, tracked: TrackedTask, *, fresh: bool) -> None:
        task_id = tracked.task_id
        self._leased.add(task_id)
        self._following.discard(task_id)
        try:
            if not fresh:  # taken over or resumed: it may have moved on (or ended) meanwhile
                log.info("%s: watching task %s (lease taken)", self.principal, task_id)
                await _quietly(self.refresh(task_id))
            await super()._watch(tracked)
        finally:
            self._leased.discard(task_id)
            self.resumed.discard(task_id)
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await _quietly(self.fleet.release(task_id))

    def _publish_soon(self, tracked: TrackedTask) -> None:
        """Tell the fleet what this replica learnt (from a create or the gateway), not what it read back."""
        if tracked.task_id in self._following and tracked.task_id not in self._leased:
            return
        if self._group is not None:
            self._group.start_soon(self._publish, tracked.task)

    async def _publish(self, task: Task) -> None:
        await self.durably(f"record the state of {task.task_id}", lambda: self.fleet.publish(self.principal, task))


async def _quietly(step: Awaitable[_T]) -> _T | None:
    """A fleet step that may fail while the database or the gateway is away: the caller retries next round."""
    try:
        return await step
    except (LedgerUnavailableError, GatewayError) as exc:
        log.warning("fleet step failed (%s); will retry", exc)
        return None
