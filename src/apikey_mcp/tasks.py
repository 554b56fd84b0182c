"""The task registry: every task this session created or asked about, watched until it ends.

One watcher per task polls the gateway with backoff, however many callers wait on it; a task's end closes
its reservation exactly once (settled at the real charge on success, released on failure). Callers wait
on the task's change event, so a later push (a signed callback) can wake them the same way. A ledger write
that fails (the store is locked or down) is retried in the background until it lands, never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import anyio.abc

from .budget import Ledger, LedgerUnavailableError, Reservation
from .gateway import GatewayClient, GatewayError, NotFoundError
from .gateway.models import Task, TaskStatus

log = logging.getLogger(__name__)
RETRY_CAP_SECONDS = 30.0  # longest wait between retries of a ledger write that failed


@dataclass
class TrackedTask:
    task: Task
    modality: str | None
    reservation: Reservation | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)
    duplicates: list[Reservation] = field(default_factory=list)  # creates the gateway answered with this id again

    @property
    def task_id(self) -> str:
        return self.task.task_id


def modality_of(task: Task) -> str | None:
    """'gateway.video.task' -> 'video' (inferred naming)."""
    parts = (task.object or "").split(".")
    return parts[1] if len(parts) == 3 else None


class TaskRegistry:
    def __init__(
        self,
        client: GatewayClient,
        ledger: Ledger,
        *,
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
        adopt_unknown: bool = True,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`adopt_unknown`: whether a task id this registry did not create may be looked up at the gateway
        (yes over stdio, where the key is the user's own; no when hosted, where the key is shared).
        `sleep` is what a watcher waits with between polls: a test passes its own to own the clock."""
        self.adopt_unknown = adopt_unknown
        self._sleep = sleep
        self.client = client
        self.ledger = ledger
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._tasks: dict[str, TrackedTask] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self.observers: list[Callable[[TrackedTask], None]] = []  # told of every new task and every change

    def start(self, group: anyio.abc.TaskGroup) -> None:
        """Run this registry's watchers in `group` (hosting runs every principal's in one group)."""
        self._group = group

    def unfinished(self) -> list[str]:
        return [t.task_id for t in self._tasks.values() if not t.task.is_terminal]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TaskRegistry]:
        """Own the watchers for as long as the session lives; say which tasks were still running at the end."""
        async with anyio.create_task_group() as group:
            self.start(group)
            try:
                yield self
            finally:
                if unfinished := self.unfinished():
                    log.warning("stopping with %d unfinished task(s): %s", len(unfinished), ", ".join(unfinished))
                group.cancel_scope.cancel()

    def get(self, task_id: str) -> TrackedTask | None:
        return self._tasks.get(task_id)

    def ids(self) -> list[str]:
        return list(self._tasks)

    async def track(self, task: Task, modality: str | None, reservation: Reservation | None) -> TrackedTask:
        """Register a task just created (or resumed after a restart); its reservation is now tied to it.

        A task id the gateway already gave for an earlier create keeps its one watcher; the new reservation
        is tied to the same task and closes when it ends (one task is charged once), so none leaks."""
        known = self._tasks.get(task.task_id)
        if known is not None:
            if reservation is not None and reservation.id != (known.reservation.id if known.reservation else None):
                log.warning("the gateway answered a create with task %s again; its reservation follows that task",
                            task.task_id)  # fmt: skip
                await self.durably(f"tie a reservation to {task.task_id}",
                                    lambda: self.ledger.attach(reservation, task.task_id, modality))  # fmt: skip
                if known.reservation is None:
                    known.reservation = reservation
                else:
                    known.duplicates.append(reservation)
                if known.task.is_terminal:
                    await self._close(known, known.task)
            await self._apply(known, task)
            return known
        tracked = TrackedTask(task, modality, reservation)
        self._tasks[task.task_id] = tracked
        if reservation is not None and reservation.task_id != task.task_id:  # not yet tied (a resumed one is)
            await self.durably(f"tie a reservation to {task.task_id}",
                                lambda: self.ledger.attach(reservation, task.task_id, modality))  # fmt: skip
        self._notify(tracked)
        await self._apply(tracked, task)
        if not task.is_terminal:
            self._watch_soon(tracked)
        return tracked

    async def refresh(self, task_id: str) -> TrackedTask:
        """Fetch the task's state now. A task this session did not create is adopted, with no reservation;
        one the principal created through another process on the same ledger is taken up with its hold."""
        tracked = self._tasks.get(task_id)
        held = None
        if tracked is None and not self.adopt_unknown:
            held = await self.ledger.task_reservation(task_id)
            if held is None:
                raise NotFoundError(f"Task '{task_id}' was not created by this principal", code="task_not_found")
        task = await self.client.get_task(task_id)
        tracked = self._tasks.get(task_id)
        if tracked is None and held is not None:
            return await self.track(task, held.modality, held)  # closed here or there: the store does it once
        if tracked is None:
            tracked = self._tasks[task_id] = TrackedTask(task, modality_of(task))
            self._notify(tracked)
            if not task.is_terminal:
                self._watch_soon(tracked)
        await self._apply(tracked, task)
        return tracked

    async def update(self, task: Task) -> TrackedTask | None:
        """Apply a task state that arrived by other means (a verified callback); None if the task is unknown."""
        tracked = self._tasks.get(task.task_id)
        if tracked is not None:
            await self._apply(tracked, task)
        return tracked

    async def wait(
        self,
        task_id: str,
        seconds: float,
        on_change: Callable[[TrackedTask], Awaitable[None]] | None = None,
    ) -> TrackedTask:
        """The task's state after at most `seconds`, sooner if it ends; `on_change` hears every change."""
        tracked = self._tasks.get(task_id)
        if tracked is None or not tracked.task.is_terminal:
            tracked = await self.refresh(task_id)
        if on_change is not None:
            await on_change(tracked)
        with anyio.move_on_after(seconds):
            while not tracked.task.is_terminal:
                await tracked.changed.wait()
                if on_change is not None:
                    await on_change(tracked)
        return tracked

    async def _apply(self, tracked: TrackedTask, task: Task) -> None:
        if tracked.task.is_terminal and tracked.task is not task:
            return  # a terminal state is final; a late or replayed update cannot undo it
        before = (tracked.task.status, tracked.task.progress)
        tracked.task = task
        if task.is_terminal:
            await self._close(tracked, task)
        if (task.status, task.progress) != before or task.is_terminal:
            tracked.changed.set()
            tracked.changed = anyio.Event()
            self._notify(tracked)

    def _notify(self, tracked: TrackedTask) -> None:
        """Tell the observers; a failing one is logged and cannot lose the task or its reservation."""
        for observer in self.observers:
            try:
                observer(tracked)
            except Exception:
                log.exception("a task observer failed for %s (the task is still tracked)", tracked.task_id)

    async def _close(self, tracked: TrackedTask, task: Task) -> None:
        """Settle the task's reservation at its charge (or release it if it failed); a duplicate create's
        reservation is released, since the gateway charges one task once."""
        if (reservation := tracked.reservation) is not None:
            if task.status == TaskStatus.SUCCEEDED:
                charged = task.credits.charged if task.credits and task.credits.charged is not None else None
                charged = reservation.credits if charged is None else charged  # no stated charge: the whole hold
                await self.durably(f"settle task {task.task_id}", lambda: self._settle(reservation, charged, task))
            else:
                await self.durably(f"release task {task.task_id}", lambda: self._release(reservation, task))
        for duplicate in tracked.duplicates:
            await self.durably(f"release a duplicate of {task.task_id}", partial(self._release, duplicate, task))

    async def _settle(self, reservation: Reservation, charged: int, task: Task) -> None:
        if await self.ledger.settle(reservation, charged):
            log.info("task %s succeeded; settled %d credits", task.task_id, charged)

    async def _release(self, reservation: Reservation, task: Task) -> None:
        if await self.ledger.release(reservation):
            log.info("task %s ended (%s); released %d reserved credits", task.task_id, task.status, reservation.credits)

    async def durably(self, what: str, write: Callable[[], Awaitable[object]]) -> None:
        """Write to the ledger now; if the store cannot take it, keep retrying in the background (the
        reservation stays counted meanwhile, so the budget errs on the safe side)."""
        try:
            await write()
            return
        except LedgerUnavailableError as exc:
            log.error("could not %s (%s); retrying until the ledger takes it", what, exc)
        if self._group is None:
            raise RuntimeError("TaskRegistry.running() must be entered before tasks are tracked")
        self._group.start_soon(self._retry, what, write, name=f"retry: {what}")

    async def _retry(self, what: str, write: Callable[[], Awaitable[object]]) -> None:
        delay = self.poll_interval
        while True:
            await anyio.sleep(delay)
            try:
                await write()
            except LedgerUnavailableError:
                delay = min(delay * 2, RETRY_CAP_SECONDS)
                continue
            log.info("the ledger took it at last: %s", what)
            return

    def _watch_soon(self, tracked: TrackedTask) -> None:
        if self._group is None:
            raise RuntimeError("TaskRegistry.running() must be entered before tasks are tracked")
        self._group.start_soon(self._watch, tracked, name=f"watch {tracked.task_id}")

    async def _watch(self, tracked: TrackedTask) -> None:
        interval = self.poll_interval
        while not tracked.task.is_terminal:
            await self._sleep(interval)
            try:
                await self.refresh(tracked.task_id)
            except NotFoundError:
                log.error("task %s is no longer known to the gateway; its reservation stays open", tracked.task_id)
                return
            except GatewayError as exc:
                log.warning("polling task %s failed (%s); will retry", tracked.task_id, exc.message)
            except Exception:
                log.exception("polling task %s crashed; will retry", tracked.task_id)
            interval = min(interval * 1.5, self.max_poll_interval)
