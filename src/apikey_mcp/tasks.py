"""The task registry: every task this session created or asked about, watched until it ends.

One watcher per task asks the gateway about it, however many callers wait on it; a task's end closes its
reservation exactly once (settled at the real charge on success, released on failure). Callers wait on the
task's change event, so a push (a signed callback) wakes them the same way. A ledger write that fails (the
store is locked or down) is retried in the background until it lands, never dropped.

How a task is watched is a strategy the registry is given (watcher.py: polling the gateway; replica mode
supplies one that coordinates with the fleet). Watchers, result saves and retried writes all run under one
supervisor (supervisor.py), so a failure in one is that job's alone. `wait` asks the gateway only when what
the registry knows is not fresh. A task the gateway stopped knowing is *lost* (its hold stays counted).
What a task's end writes to the ledger is settlement.py's; how long finished tasks stay, retention.py's.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio

from . import metrics
from .budget import Ledger, Reservation
from .durable import durably
from .gateway import GatewayClient, NotFoundError
from .gateway.models import Task, TaskStatus
from .lost import held_by, log_lost, log_still_open
from .polling import Durations, Pacer, Schedule
from .retention import Retention
from .settlement import close_reservations
from .supervisor import Supervisor
from .tracked import TrackedTask, modality_of
from .watcher import LOST_AFTER_SECONDS, PollingWatcher, Watcher

log = logging.getLogger(__name__)
__all__ = ["TaskRegistry", "TrackedTask", "modality_of"]


class TaskRegistry:
    def __init__(
        self,
        client: GatewayClient,
        ledger: Ledger,
        *,
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
        adopt_unknown: bool = True,
        callbacks: bool = False,
        fresh_seconds: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        retention: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        pacer: Pacer | None = None,
        watcher: Callable[[TaskRegistry], Watcher] = PollingWatcher,
        lost_after: float = LOST_AFTER_SECONDS,
        principal: str | None = None,
    ) -> None:
        """`adopt_unknown`: whether a task id this registry did not create may be looked up at the gateway
        (yes over stdio, where the key is the user's own; no when hosted, where the key is shared).
        `callbacks`: whether the gateway pushes each task's end here (then polling is a slow fallback).
        `fresh_seconds`: how old a known state may be for `wait` to answer from it without a request.
        `sleep` and `clock` are what watchers wait with and tell time by: a test passes its own to own time.
        `pacer` gives fallback polls (callbacks wired) their turns; hosting shares one across principals.
        `retention`: seconds a finished task stays in memory (None: for ever; then only its id, retention.py).
        `watcher` makes the strategy that watches each task; `lost_after`: seconds of 404s before a task is
        lost; `principal` names whose tasks these are in the supervisor's logs."""
        self.adopt_unknown = adopt_unknown
        self._sleep = sleep
        self._clock = clock
        self.client = client
        self.ledger = ledger
        self.poll_interval = poll_interval
        self.schedule = Schedule(first=poll_interval, waiting_max=max_poll_interval, callbacks=callbacks)
        self.fresh_seconds = fresh_seconds
        self.pacer = pacer or Pacer()
        self.watching = 0  # watchers alive now
        self.durations = Durations()
        self._tasks: dict[str, TrackedTask] = {}
        self.retention = Retention(retention)
        self.forgotten = self.retention.forgotten  # told of every finished task let go of
        self.supervisor: Supervisor | None = None
        self.observers: list[Callable[[TrackedTask], None]] = []  # told of every new task and every change
        self.lost_after = lost_after
        self.principal = principal
        self.watcher = watcher(self)

    @property
    def sleep(self) -> Callable[[float], Awaitable[None]]:
        return self._sleep

    def clock(self) -> float:
        return self._clock()

    def start(self, supervisor: Supervisor) -> None:
        """Run this registry's background work under `supervisor` (hosting has one for every principal)."""
        self.supervisor = supervisor

    def unfinished(self) -> list[str]:
        return [t.task_id for t in self._tasks.values() if not t.task.is_terminal and t.lost_at is None]

    def lost(self) -> list[TrackedTask]:
        return [t for t in self._tasks.values() if t.lost_at is not None]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TaskRegistry]:
        """Own the watchers for as long as the session lives; say which tasks were still running at the end."""
        async with Supervisor().running() as supervisor:
            self.start(supervisor)
            try:
                yield self
            finally:
                if unfinished := self.unfinished():
                    log.warning("stopping with %d unfinished task(s): %s", len(unfinished), ", ".join(unfinished))
                await log_still_open(self)

    def get(self, task_id: str) -> TrackedTask | None:
        return self._tasks.get(task_id)

    def ids(self) -> list[str]:
        return list(self._tasks)

    def knows(self, task_id: str) -> bool:
        """Whether this registry tracks the task, or tracked it until its retention ran out."""
        return task_id in self._tasks or self.retention.retired(task_id)

    def prune(self) -> None:
        """Let go of finished tasks older than the retention (each is in the state file, if any)."""
        for task_id in self.retention.expired(self._clock()):
            self._tasks.pop(task_id, None)
            self.retention.retire(task_id)

    async def track(
        self, task: Task, modality: str | None, reservation: Reservation | None, *, confirmed: bool = True
    ) -> TrackedTask:
        """Register a task just created (or resumed after a restart); its reservation is now tied to it.
        `confirmed=False`: `task` is a stand-in (a resumed task), so the gateway is asked first thing.

        A task id the gateway already gave for an earlier create keeps its one watcher; the new reservation
        is tied to the same task and closes when it ends (one task is charged once), so none leaks."""
        self.prune()
        known = self._tasks.get(task.task_id)
        if known is not None:
            if reservation is not None and reservation.id != (known.reservation.id if known.reservation else None):
                log.warning(
                    "the gateway answered a create with task %s again; its reservation follows that task", task.task_id
                )
                await self.durably(
                    f"tie a reservation to {task.task_id}",
                    lambda: self.ledger.attach(reservation, task.task_id, modality),
                )
                if known.reservation is None:
                    known.reservation = reservation
                else:
                    known.duplicates.append(reservation)
                if known.task.is_terminal:
                    await self._close(known, known.task)
            await self._apply(known, task)
            return known
        now = self._clock()
        tracked = TrackedTask(task, modality, reservation, started=now, known_at=now, asked_at=now, confirmed=confirmed)
        self._tasks[task.task_id] = tracked
        if reservation is not None and reservation.task_id != task.task_id:  # not yet tied (a resumed one is)
            await self.durably(
                f"tie a reservation to {task.task_id}", lambda: self.ledger.attach(reservation, task.task_id, modality)
            )
        if reservation is not None and reservation.lost_at is not None:
            tracked.lost_at = reservation.lost_at  # marked lost before: not watched again, the operator closes it
        self.notify(tracked)
        await self._apply(tracked, task)
        if not task.is_terminal and tracked.lost_at is None:
            self._watch_soon(tracked)
        return tracked

    async def refresh(self, task_id: str) -> TrackedTask:
        """Fetch the task's state now. A task this session did not create is adopted, with no reservation;
        one the principal created through another process on the same ledger is taken up with its hold."""
        self.prune()
        tracked = self._tasks.get(task_id)
        held = None
        if tracked is None and not self.adopt_unknown and not self.retention.retired(task_id):
            held = await self.ledger.task_reservation(task_id)
            if held is None:
                raise NotFoundError(f"Task '{task_id}' was not created by this principal", code="task_not_found")
        asked = self._clock()
        if tracked is not None:
            tracked.asked_at, tracked.polls = asked, tracked.polls + 1
        task = await self.client.get_task(task_id)
        tracked = self._tasks.get(task_id)
        if tracked is None and held is not None:
            return await self.track(task, held.modality, held)  # closed here or there: the store does it once
        if tracked is None:
            started = asked - _age_by_wall_clock(task)
            tracked = TrackedTask(task, modality_of(task), started=started, asked_at=asked, polls=1)
            self._tasks[task_id] = tracked
            self.retention.revive(task_id)
            self.notify(tracked)
            if not task.is_terminal:
                self._watch_soon(tracked)
        tracked.known_at, tracked.confirmed = max(tracked.known_at, asked), True
        await self._apply(tracked, task)
        return tracked

    async def update(self, task: Task) -> TrackedTask | None:
        """Apply a task state that arrived by other means (a verified callback); None if the task is unknown."""
        tracked = self._tasks.get(task.task_id)
        if tracked is not None:
            tracked.known_at, tracked.confirmed = self._clock(), True
            await self._apply(tracked, task)
        return tracked

    def is_fresh(self, tracked: TrackedTask, *, waiting: bool = False) -> bool:
        """Whether what the registry knows of the task may stand for the gateway's answer now: it has ended, or
        the caller will wait and the end is pushed here (the fallback polls cover a lost push), or it is recent,
        or the gateway is being backed off from after an error (so no caller can make a tight loop of polls)."""
        if tracked.task.is_terminal or tracked.lost_at is not None:
            return True
        if tracked.errors and self._clock() < tracked.retry_at:
            return True  # the gateway failed just now: its watcher asks again when due, no caller sooner
        if not tracked.confirmed:
            return False
        return (waiting and self.schedule.callbacks) or self._clock() - tracked.known_at <= self.fresh_seconds

    async def wait(
        self,
        task_id: str,
        seconds: float,
        on_change: Callable[[TrackedTask], Awaitable[None]] | None = None,
    ) -> TrackedTask:
        """The task's state after at most `seconds`, sooner if it ends; `on_change` hears every change.

        The gateway is asked first only if the known state is not fresh (`is_fresh`); while the caller waits, the
        task's watcher polls on the waiting schedule, or a push ends the wait.
        """
        tracked = self._tasks.get(task_id)
        if tracked is None or not self.is_fresh(tracked, waiting=seconds > 0):
            try:
                tracked = await self.refresh(task_id)
            except NotFoundError:
                if tracked is None or tracked.reservation is None:
                    raise
                if tracked.missing_since is None:  # held here: say so, and let the watcher decide when it is lost
                    tracked.missing_since = self._clock()
                return tracked
        if on_change is not None:
            await on_change(tracked)
        if tracked.task.is_terminal or tracked.lost_at is not None or seconds <= 0:
            return tracked
        tracked.waiters += 1
        if not self.schedule.callbacks:  # with callbacks a waiter changes no plan (and keeps the pacer's turn)
            tracked.wake_watcher()  # to plan again, now that someone waits
        try:
            with anyio.move_on_after(seconds):
                while not tracked.task.is_terminal and tracked.lost_at is None:
                    await tracked.changed.wait()
                    if on_change is not None:
                        await on_change(tracked)
        finally:
            tracked.waiters -= 1
        return tracked

    async def _apply(self, tracked: TrackedTask, task: Task) -> None:
        if tracked.task.is_terminal and tracked.task is not task:
            return  # a terminal state is final; a late or replayed update cannot undo it
        before = (tracked.task.status, tracked.task.progress)
        tracked.task = task
        if task.progress is not None and task.status == TaskStatus.RUNNING:
            tracked.progress_age = tracked.known_at - tracked.started
        if not task.is_terminal:
            tracked.live_age = tracked.known_at - tracked.started
        else:
            self._learn_duration(tracked)
            metrics.task_ended(tracked.modality, tracked.known_at - tracked.started)
            tracked.wake_watcher()  # to stop: nothing left to ask
            await self._close(tracked, task)
            self.retention.ended(task.task_id, self._clock())
        if (task.status, task.progress) != before or task.is_terminal:
            tracked.changed.set()
            tracked.changed = anyio.Event()
            self.notify(tracked)

    def notify(self, tracked: TrackedTask) -> None:
        """Tell the observers; a failing one is logged and cannot lose the task or its reservation."""
        for observer in self.observers:
            try:
                observer(tracked)
            except Exception:
                log.exception("a task observer failed for %s (the task is still tracked)", tracked.task_id)

    async def _close(self, tracked: TrackedTask, task: Task) -> None:
        """Close what the task holds in the ledger (settlement.py), unless the watcher strategy says another
        party closes it (a follower replica: the fleet's watcher has)."""
        if self.watcher.closes(tracked):
            await close_reservations(self.ledger, tracked, task, self.durably)

    async def durably(self, what: str, write: Callable[[], Awaitable[object]]) -> None:
        """Write to the ledger now, or keep retrying under the supervisor until it lands (durable.py)."""
        await durably(what, write, lambda *args, name: self.spawn(*args, name=name))

    def spawn(
        self, func: Callable[..., Coroutine[Any, Any, object]], *args: object, name: str, task: str | None = None
    ) -> None:
        """Run `func` beside the watchers (a result save, a retried write), under the supervisor."""
        if self.supervisor is None:
            raise RuntimeError("TaskRegistry.running() must be entered before work is started")
        self.supervisor.spawn(func, *args, name=name, task=task, principal=self.principal)

    def _watch_soon(self, tracked: TrackedTask) -> None:
        self.spawn(self.watcher.watch, tracked, name=f"watch {tracked.task_id}", task=tracked.task_id)

    async def lose(self, tracked: TrackedTask) -> None:
        """The gateway no longer knows the task: its reservation stays counted (it may have been charged) and
        is marked lost, for the operator to close; anyone waiting on it hears so."""
        tracked.lost_at = time.time()
        log_lost(tracked)
        for reservation in held_by(tracked):  # the create's, and any create the gateway answered with it again
            if reservation.lost_at is None:
                await self.durably(
                    f"mark task {tracked.task_id} lost", functools.partial(self.ledger.mark_lost, reservation)
                )
        tracked.changed.set()
        tracked.changed = anyio.Event()
        self.notify(tracked)

    def _learn_duration(self, tracked: TrackedTask) -> None:
        """Learn the middle of what is known of the task's duration: it ended after it was last seen unfinished
        and before its end was noticed. (The age at which the end was noticed alone is late by the poll's aim,
        and aiming at it would creep later task after task; the middle shrinks whenever a poll overshoots.)"""
        if tracked.task.status == TaskStatus.SUCCEEDED and tracked.task.model:
            noticed = tracked.known_at - tracked.started
            self.durations.learn(tracked.task.model, (tracked.live_age + noticed) / 2)


def _age_by_wall_clock(task: Task) -> float:
    """A task we did not create: its age from the gateway's created_at (unix seconds), when it says."""
    if isinstance(task.created_at, int | float) and not isinstance(task.created_at, bool):
        return max(0.0, time.time() - float(task.created_at))
    return 0.0
