"""The one supervisor of background work: task watchers, result saves, ledger-write retries, replica upkeep.

Every job runs in the supervisor's task group behind a guard: an exception it raises is logged with the job's
name, task and principal, counted, and ends that job alone. Nothing a job raises can cancel another job, the
group, or the server's lifespan. A *service* (the replica's listener, its lease upkeep) is a job that should
run as long as the server: when it ends or fails it is started again after a backoff that doubles up to a cap.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from . import metrics

log = logging.getLogger(__name__)
RESTART_FIRST, RESTART_CAP = 0.5, 30.0  # seconds before a failed service is started again (doubling, jittered)
Job = Callable[..., Coroutine[Any, Any, object]]


class Supervisor:
    def __init__(self, *, sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        self._group: anyio.abc.TaskGroup | None = None
        self._sleep = sleep
        self.failures: Counter[str] = Counter()  # job kind ("watch", "save", ...) -> failures so far
        self.restarts: Counter[str] = Counter()  # service name -> restarts so far
        self.jobs = 0  # running now

    @property
    def alive(self) -> bool:
        return self._group is not None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        """Run the jobs started from now until the block ends (then they are cancelled)."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield self
            finally:
                self._group = None
                group.cancel_scope.cancel()

    def spawn(self, func: Job, *args: object, name: str, task: str | None = None, principal: str | None = None) -> None:
        """Run `func(*args)` as one guarded job; its failure is its own."""
        if self._group is None:
            raise RuntimeError("the supervisor must be running before background work is started")
        self._group.start_soon(self._guard, func, args, name, task, principal, name=name)

    def service(self, func: Job, *args: object, name: str) -> None:
        """Run `func(*args)` for as long as the supervisor runs, restarted with backoff whenever it ends or fails."""
        self.spawn(self._keep, func, args, name, name=f"service {name}")

    async def _guard(
        self, func: Job, args: tuple[object, ...], name: str, task: str | None, principal: str | None
    ) -> None:
        self.jobs += 1
        try:
            await func(*args)
        except Exception as exc:
            kind = name.split(" ", 1)[0]
            self.failures[kind] += 1
            metrics.background_error(kind)
            log.error(
                "background job '%s' failed (task %s, principal %s): %s: %s; it ended alone",
                name,
                task or "-",
                principal or "-",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        finally:
            self.jobs -= 1

    async def _keep(self, func: Job, args: tuple[object, ...], name: str) -> None:
        delay = RESTART_FIRST
        while True:
            started = anyio.current_time()
            try:
                await func(*args)
                log.warning("service %s ended; starting it again in %.1f s", name, delay)
            except Exception as exc:
                self.failures[name] += 1
                metrics.background_error(name)
                log.error(
                    "service %s failed (%s: %s); starting it again in %.1f s",
                    name,
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=exc,
                )
            self.restarts[name] += 1
            if anyio.current_time() - started > RESTART_CAP:  # it ran well for a while: start over from the first
                delay = RESTART_FIRST
            await self._sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, RESTART_CAP)
