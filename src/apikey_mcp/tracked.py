"""What the registry knows of one task: its latest state, its reservation, and its watcher's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio

from .budget import Reservation
from .gateway.models import Task


@dataclass
class TrackedTask:
    task: Task
    modality: str | None
    reservation: Reservation | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)
    duplicates: list[Reservation] = field(default_factory=list)  # creates the gateway answered with this id again
    # On the registry's clock: when the task started, when its state was last known (a poll's answer or a
    # push), when the gateway was last asked, and the task's age when it last reported progress.
    started: float = 0.0
    known_at: float = 0.0
    asked_at: float = 0.0
    progress_age: float | None = None
    live_age: float = 0.0  # the task's age when it was last seen unfinished
    polls: int = 0
    confirmed: bool = True  # False for a task resumed from the ledger, until the gateway or a push tells its state
    waiters: int = 0  # callers in `wait` now
    napping: anyio.CancelScope | None = field(default=None, repr=False)  # the watcher's sleep, to wake it
    errors: int = 0  # gateway errors in a row (the watcher backs off)
    retry_at: float = 0.0  # on the registry's clock: not asked again before this, after an error
    error_logged_at: float = float("-inf")
    missing_since: float | None = None  # on the registry's clock: the gateway has answered 404 since
    lost_at: float | None = None  # unix time it was marked lost (the gateway answered 404 for a minute)

    @property
    def task_id(self) -> str:
        return self.task.task_id

    def ended(self) -> bool:
        return self.task.is_terminal

    def wake_watcher(self) -> None:
        if self.napping is not None:
            self.napping.cancel()


def modality_of(task: Task) -> str | None:
    """'gateway.video.task' -> 'video' (inferred naming)."""
    parts = (task.object or "").split(".")
    return parts[1] if len(parts) == 3 else None


def lost_step(tracked: TrackedTask) -> str:
    """What the agent reads about a lost task: its hold stays counted, and who can close it."""
    when = datetime.fromtimestamp(tracked.lost_at or 0, UTC).isoformat(timespec="seconds")
    held = [r for r in (tracked.reservation, *tracked.duplicates) if r is not None]
    if len(held) > 1:  # the gateway answered more than one create with this task: each hold is closed alone
        hold = f"its {sum(r.credits for r in held)} reserved credits ({len(held)} holds) stay counted"
        close = f"` for each hold ({', '.join(r.id for r in held)})"
        return (
            f"Lost: the gateway no longer knows this task (marked lost at {when}); {hold}, since it may have "
            f"been charged. Nothing more will come of it: ask the operator to close them with "
            f"`apikey-mcp admin close ID --charged N | --released{close}."
        )
    hold = f"its {held[0].credits} reserved credits stay counted" if held else "nothing is held for it here"
    close = f" {held[0].id}" if held else ""
    return (
        f"Lost: the gateway no longer knows this task (marked lost at {when}); {hold}, since it may have "
        f"been charged. Nothing more will come of it: ask the operator to close it with "
        f"`apikey-mcp admin close{close} --charged N | --released`."
    )
