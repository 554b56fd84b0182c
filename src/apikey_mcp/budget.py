"""The session ledger: a credit budget that paid calls reserve from before they start.

`spent + reserved <= budget` holds after every operation: a reservation that does not fit is refused
whole, and each reservation ends exactly once, settled at the real charge or released. Every method is
synchronous and takes a lock, so it is atomic under any interleaving of async tasks (and threads).
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


class BudgetExceededError(Exception):
    """A paid call that does not fit in what is left; nothing was reserved or created."""

    def __init__(self, needed: int, remaining: int, budget: int, purpose: str) -> None:
        self.needed, self.remaining, self.budget, self.purpose = needed, remaining, budget, purpose
        super().__init__(
            f"Over budget: {purpose} is estimated at {needed} credits but only {remaining} of the session's "
            f"{budget} remain, so nothing was created. Choose a shorter or lower-resolution job or a cheaper "
            f"model (list_models, estimate), or ask the human to raise the budget (request_budget_increase)."
        )


class ReservationState(StrEnum):
    RESERVED = "reserved"
    SETTLED = "settled"
    RELEASED = "released"


@dataclass
class Reservation:
    id: str
    credits: int
    purpose: str
    task_id: str | None = None
    state: ReservationState = ReservationState.RESERVED
    charged: int | None = None


@dataclass(frozen=True)
class Totals:
    """The budget in numbers, read in O(1) however many reservations are open."""

    budget: int
    spent: int
    reserved: int

    @property
    def remaining(self) -> int:
        return self.budget - self.spent - self.reserved


@dataclass(frozen=True)
class Snapshot(Totals):
    """The totals and every open reservation: O(open) to build, for the few readers that need the list."""

    open: tuple[Reservation, ...]


class Ledger:
    """Budget, reservations and spend for one session (or, when hosted, one principal).

    `open` restores reservations still held from an earlier run (hosted mode keeps the ledger on disk).
    Observers are called after every change, under the lock, with the totals and the reservation that
    changed (None when the budget itself did); the state file writes through one of them.

    `reserved` is a running total, moved by each reserve and each close, never re-summed: the cost of a
    reservation, a read or a change does not grow with the number of open reservations.
    """

    def __init__(self, budget: int, *, spent: int = 0, open: tuple[Reservation, ...] = ()) -> None:
        if budget < 0 or spent < 0:
            raise ValueError("budget and spent must be >= 0")
        self._budget = budget
        self._spent = spent
        self._open: dict[str, Reservation] = {r.id: r for r in open}
        self._reserved = sum(r.credits for r in open)
        self._lock = threading.Lock()
        self.observers: list[Callable[[Totals, Reservation | None], None]] = []

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def spent(self) -> int:
        return self._spent

    @property
    def reserved(self) -> int:
        return self._reserved

    @property
    def remaining(self) -> int:
        with self._lock:
            return self._budget - self._spent - self._reserved

    def totals(self) -> Totals:
        """Budget, spent and reserved, consistent with each other."""
        with self._lock:
            return self._totals()

    @property
    def open_count(self) -> int:
        return len(self._open)

    def open_reservations(self, limit: int, offset: int = 0) -> list[Reservation]:
        """A page of the open reservations, oldest first: O(offset + limit), never the whole list."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        with self._lock:
            return list(itertools.islice(self._open.values(), offset, offset + limit))

    def open_reservation(self, reservation_id: str) -> Reservation | None:
        return self._open.get(reservation_id)

    def snapshot(self) -> Snapshot:
        """The totals and every open reservation (O(open)); prefer `totals` and `open_reservations`."""
        with self._lock:
            return Snapshot(self._budget, self._spent, self._reserved, tuple(self._open.values()))

    def reserve(self, credits: int, purpose: str) -> Reservation:
        """Hold `credits` for a call about to be made, or raise BudgetExceededError and hold nothing."""
        if credits < 0:
            raise ValueError("credits must be >= 0")
        with self._lock:
            remaining = self._budget - self._spent - self._reserved
            if credits > remaining:
                raise BudgetExceededError(credits, remaining, self._budget, purpose)
            reservation = Reservation(uuid.uuid4().hex, credits, purpose)
            self._open[reservation.id] = reservation
            self._reserved += credits
            self._changed(reservation)
            return reservation

    def attach(self, reservation: Reservation, task_id: str) -> None:
        """Tie a reservation to the task it paid for, so the task's end can close it."""
        with self._lock:
            reservation.task_id = task_id
            self._changed(reservation)

    def settle(self, reservation: Reservation, charged: int) -> bool:
        """Close a reservation at the real charge; False if it was already closed (exactly once)."""
        with self._lock:
            if self._open.pop(reservation.id, None) is None:
                return False
            self._reserved -= reservation.credits
            if charged > reservation.credits:
                log.warning(
                    "gateway charged %d credits for %s, over the %d reserved (max_credits)",
                    charged, reservation.purpose, reservation.credits,
                )  # fmt: skip
            reservation.state, reservation.charged = ReservationState.SETTLED, charged
            self._spent += charged
            self._changed(reservation)
            return True

    def release(self, reservation: Reservation) -> bool:
        """Give a reservation back unspent (failed or refunded); False if it was already closed."""
        with self._lock:
            if self._open.pop(reservation.id, None) is None:
                return False
            self._reserved -= reservation.credits
            reservation.state, reservation.charged = ReservationState.RELEASED, 0
            self._changed(reservation)
            return True

    def raise_budget(self, credits: int) -> None:
        """Add to the budget. Only the human may cause this: configuration, or an approved elicitation."""
        if credits <= 0:
            raise ValueError("a budget increase must be > 0")
        with self._lock:
            self._budget += credits
            log.info("budget raised by %d credits to %d", credits, self._budget)
            self._changed(None)

    def _totals(self) -> Totals:
        return Totals(self._budget, self._spent, self._reserved)

    def _changed(self, reservation: Reservation | None = None) -> None:
        """Tell the observers. A failing observer is logged, never allowed to undo or block the change."""
        if self.observers:
            totals = self._totals()
            for observer in self.observers:
                try:
                    observer(totals, reservation)
                except Exception:
                    log.exception("a ledger observer failed (the ledger itself is unaffected)")
