"""Tasks the gateway no longer knows (it answers 404 for an id it gave): their reservations stay open, since
what was charged is unknown, until the operator closes them with `apikey-mcp admin close`.

The log names the reservation and the command, when the task is lost and again at shutdown; a reservation the
operator has closed meanwhile is no longer listed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from .budget import Reservation, ReservationState

if TYPE_CHECKING:
    from .tasks import TaskRegistry
    from .tracked import TrackedTask

log = logging.getLogger("apikey_mcp.tasks")
CHECK_SECONDS = 5.0  # at shutdown, the longest the ledger is asked which lost tasks' reservations are still open


def close_command(reservation_id: str) -> str:
    return f"apikey-mcp admin close {reservation_id} --released (or --charged N, if the gateway charged N credits)"


def held_by(tracked: TrackedTask) -> list[Reservation]:
    """The open reservations tied to the task (the first create's, and any create answered with it again)."""
    mine = [tracked.reservation, *tracked.duplicates]
    return [r for r in mine if r is not None and r.state == ReservationState.RESERVED]


def log_lost(tracked: TrackedTask) -> None:
    """The watcher's last word on a task the gateway no longer knows: what holds credits, and how to close it."""
    held = held_by(tracked)
    if not held:
        log.error("task %s is no longer known to the gateway; no reservation is open for it", tracked.task_id)
    for r in held:
        log.error(
            "task %s is no longer known to the gateway; its reservation %s (%d credits, %s) stays open "
            "until the operator closes it: %s",
            tracked.task_id,
            r.id,
            r.credits,
            r.purpose,
            close_command(r.id),
        )


async def log_still_open(registry: TaskRegistry, who: str = "") -> None:
    """At shutdown: the lost tasks whose reservations the ledger still has open (the operator's to close)."""
    with anyio.move_on_after(CHECK_SECONDS, shield=True):
        for tracked in registry.lost():
            for r in held_by(tracked):
                try:
                    now = await registry.ledger.store.reservation(r.id)
                except Exception:  # the ledger is down: say what was known
                    now = r
                if now is not None and now.state == ReservationState.RESERVED:
                    log.warning(
                        "%sstopping with task %s lost by the gateway, its reservation %s (%d credits) still open: %s",
                        who,
                        tracked.task_id,
                        r.id,
                        r.credits,
                        close_command(r.id),
                    )
