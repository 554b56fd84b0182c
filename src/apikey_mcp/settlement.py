"""A task's end in the ledger: its reservation is settled at the charge the gateway states (the whole hold when
it states none) or released if the task failed, and any duplicate create's reservation is released, since the
gateway charges one task once. Each write goes through `durably` (durable.py), so none is dropped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

from .budget import Ledger, Reservation
from .gateway.models import Task, TaskStatus
from .tracked import TrackedTask

log = logging.getLogger("apikey_mcp.tasks")  # the task registry's log, as these lines were before
Durably = Callable[[str, Callable[[], Awaitable[object]]], Awaitable[None]]


async def close_reservations(ledger: Ledger, tracked: TrackedTask, task: Task, durably: Durably) -> None:
    """Settle or release what `tracked` holds now that `task` (its final state) has ended."""
    if (reservation := tracked.reservation) is not None:
        if task.status == TaskStatus.SUCCEEDED:
            charged = task.credits.charged if task.credits and task.credits.charged is not None else None
            charged = reservation.credits if charged is None else charged  # no stated charge: the whole hold
            await durably(f"settle task {task.task_id}", partial(_settle, ledger, reservation, charged, task))
        else:
            await durably(f"release task {task.task_id}", partial(_release, ledger, reservation, task))
    for duplicate in tracked.duplicates:
        await durably(f"release a duplicate of {task.task_id}", partial(_release, ledger, duplicate, task))


async def _settle(ledger: Ledger, reservation: Reservation, charged: int, task: Task) -> None:
    if await ledger.settle(reservation, charged):
        log.info("task %s succeeded; settled %d credits", task.task_id, charged)


async def _release(ledger: Ledger, reservation: Reservation, task: Task) -> None:
    if await ledger.release(reservation):
        log.info("task %s ended (%s); released %d reserved credits", task.task_id, task.status, reservation.credits)
