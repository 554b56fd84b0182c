"""How a task is watched to its end: a strategy the task registry is given.

`PollingWatcher` asks the gateway on the schedule in polling.py: a caller arriving in `wait` wakes it to plan
again (closer polls while someone waits), a task that ends by a push wakes it to stop, and after every sleep
it looks whether the task ended meanwhile before asking. Replica mode supplies its own strategy
(replicas/tasks.py), which takes a lease and then uses this one.

Every gateway error backs off, exponentially with jitter up to ERROR_CAP seconds, also for a task resumed
after a restart whose state is not known yet; repeats are logged once a minute per task. A task the gateway
answers 404 for during LOST_AFTER_SECONDS is lost: one stray 404 loses nothing.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Protocol

import anyio

from . import logs, metrics
from .budget import LedgerUnavailableError
from .gateway import GatewayError, NotFoundError
from .gateway.models import TaskStatus
from .polling import Known

if TYPE_CHECKING:
    from .tasks import TaskRegistry, TrackedTask

log = logging.getLogger(__name__)
ERROR_FIRST, ERROR_CAP = 0.5, 15.0  # s: the wait after the first gateway error in a row, and the longest
ERROR_LOG_EVERY = 60.0  # s: a task's repeated errors are logged at most this often
LOST_AFTER_SECONDS = 60.0
_RNG = random.Random()


class Watcher(Protocol):
    async def watch(self, tracked: TrackedTask) -> None:
        """Follow the task until it ends (or is lost); return then."""
        ...

    def closes(self, tracked: TrackedTask) -> bool:
        """Whether this process closes the task's reservation when it ends (a follower replica does not)."""
        ...


def error_delay(errors: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `errors`-th gateway error in a row: doubling from ERROR_FIRST, capped, with
    jitter (between half and all of it, so tasks that failed together do not retry in step)."""
    full: float = min(ERROR_CAP, ERROR_FIRST * 2.0 ** max(errors - 1, 0))
    jitter: float = (rng or _RNG).uniform(0.5, 1.0)
    return full * jitter if errors > 1 else full


class PollingWatcher:
    """Polls the gateway for the task, on the registry's clock and schedule."""

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry

    def closes(self, tracked: TrackedTask) -> bool:
        return True

    def _known(self, tracked: TrackedTask) -> Known:
        registry, now = self.registry, self.registry.clock()
        return Known(
            age=now - tracked.started,
            since_request=now - tracked.asked_at,
            polls=tracked.polls,
            progress=tracked.task.progress if tracked.task.status == TaskStatus.RUNNING else None,
            age_at_progress=tracked.progress_age,
            typical=registry.durations.typical(tracked.task.model),
            waiting=tracked.waiters > 0,
        )

    async def _nap(self, tracked: TrackedTask, seconds: float) -> bool:
        """Sleep; True if woken early (someone began to wait, or the task ended)."""
        with anyio.CancelScope() as scope:
            tracked.napping = scope
            try:
                await self.registry.sleep(seconds)
            finally:
                tracked.napping = None
        return scope.cancelled_caught

    def _delay(self, tracked: TrackedTask) -> float:
        registry = self.registry
        planned = registry.schedule.delay(self._known(tracked)) if tracked.confirmed else 0.0
        return max(planned, tracked.retry_at - registry.clock())

    async def watch(self, tracked: TrackedTask) -> None:
        registry = self.registry
        logs.note(task_id=tracked.task_id, reservation_id=tracked.reservation.id if tracked.reservation else None)
        registry.watching += 1
        try:
            while not tracked.task.is_terminal and tracked.lost_at is None:
                delay = self._delay(tracked)
                if delay > 0 and await self._nap(tracked, delay):
                    continue  # woken: plan again with what changed
                if registry.schedule.callbacks and (turn := registry.pacer.reserve(registry.clock())) > 0:
                    if await self._nap(tracked, turn):
                        continue
                if tracked.ended():
                    return  # it ended while we slept (a push): nothing to ask
                await self.ask(tracked)
        finally:
            registry.watching -= 1

    async def ask(self, tracked: TrackedTask) -> None:
        """One request for the task's state; an error schedules the next one later, a long 404 loses it."""
        registry = self.registry
        try:
            await registry.refresh(tracked.task_id)
        except NotFoundError as exc:
            now = registry.clock()
            if tracked.missing_since is None:
                tracked.missing_since = now
            if now - tracked.missing_since >= registry.lost_after:
                log.warning(
                    "task %s: the gateway has not known it for %.0f s; marking it lost",
                    tracked.task_id,
                    now - tracked.missing_since,
                )
                await registry.lose(tracked)
                return
            self._failed(tracked, f"not found ({exc.code or 404})")
        except GatewayError as exc:
            self._failed(tracked, exc.message)
        except LedgerUnavailableError:
            self._failed(tracked, "the ledger is unavailable")
        else:
            tracked.errors, tracked.retry_at, tracked.missing_since = 0, 0.0, None

    def _failed(self, tracked: TrackedTask, why: str) -> None:
        now = self.registry.clock()
        metrics.background_error("watch")
        tracked.errors += 1
        delay = error_delay(tracked.errors)
        tracked.retry_at = now + delay
        if now - tracked.error_logged_at >= ERROR_LOG_EVERY:
            tracked.error_logged_at = now
            log.warning(
                "polling task %s failed (%s; %d in a row); retrying with backoff, next in %.1f s "
                "(logged once a minute)",
                tracked.task_id,
                why,
                tracked.errors,
                delay,
            )
        else:
            log.debug("polling task %s failed again (%s); next in %.1f s", tracked.task_id, why, delay)
