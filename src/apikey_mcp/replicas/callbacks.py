"""A gateway callback in replica mode: any replica takes any callback, de-duplicated, recorded and settled in one
transaction of the fleet's, then announced, so the replica watching the task hears of it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..accounts import Accounts
from ..budget import LedgerUnavailableError
from ..gateway import webhooks
from ..gateway.models import Task
from .fleet import Fleet

if TYPE_CHECKING:
    from ..hosted.callbacks import Outcome

log = logging.getLogger(__name__)


async def apply_for_fleet(
    fleet: Fleet, accounts: Accounts, task: Task, signature: str, reservation_id: str | None
) -> Outcome:
    keep = 2 * webhooks.DEFAULT_TOLERANCE
    try:
        outcome = await fleet.settle_callback(signature, keep, task, reservation_id)
    except LedgerUnavailableError as exc:  # the gateway retries a 5xx; the task's watcher settles it anyway
        log.error("could not record the callback for task %s: %s", task.task_id, exc)
        return "unavailable"
    if outcome == "replay":
        log.warning("rejected a replayed callback for task %s", task.task_id)
        return "replay"
    if outcome == "unknown":
        return "unknown"
    log.info("callback: task %s is %s (recorded for the fleet)", task.task_id, task.status)
    if task.is_terminal:  # its charge may cross an alert threshold: the checker hears of its owner
        try:
            if (shared := await fleet.find(task.task_id)) is not None:
                accounts.alerts.notice(shared.principal)
        except LedgerUnavailableError:  # the owner's next reservation checks again
            pass
    return "applied"
