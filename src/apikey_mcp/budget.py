"""The ledger: credit budgets that paid calls reserve from before they start, kept by one store.

`LedgerStore` is the single authority for every principal's budget. Each operation is one transaction:
a reservation that does not fit is refused whole (`spent + reserved <= budget` holds after every
reservation), and each reservation ends exactly once, settled at the real charge or released. Totals are
running sums the store keeps, so reading them costs the same however many reservations there were. The
implementations live in `stores/` (memory for stdio, SQLite and PostgreSQL when hosted).

Who made a change is recorded with it (`actor`): `principal:NAME` for the server acting on a principal's
call, `operator` for `apikey-mcp admin`, `configuration` for a new principal's default budget, `human` for
an approved elicitation over stdio.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

from . import metrics
from .errors import AgentError, LedgerError
from .policy import Policy

log = logging.getLogger(__name__)
OPERATOR = "operator"
CONFIGURATION = "configuration"
HUMAN = "human"


class BudgetExceededError(AgentError):
    """A paid call that does not fit in what is left; nothing was reserved or created. The message is what the
    agent reads, with advice that fits the kind of call (`purpose` begins with it: no resolution for a chat)."""

    outcome = "refused_budget"
    CHEAPER: ClassVar[dict[str, str]] = {
        "video": "a shorter or lower-resolution video",
        "image": "fewer or smaller images",
        "music": "a shorter piece",
        "chat": "a shorter conversation or a lower max_tokens",
        "embeddings": "fewer or shorter texts",
    }

    def __init__(self, needed: int, remaining: int, budget: int, purpose: str) -> None:
        self.needed, self.remaining, self.budget, self.purpose = needed, remaining, budget, purpose
        cheaper = self.CHEAPER.get(purpose.split(" ", 1)[0], "a smaller job")
        super().__init__(
            f"Over budget: {purpose} is estimated at {needed} credit{'' if needed == 1 else 's'} but only "
            f"{remaining} of the session's {budget} remain, so nothing was created. Try {cheaper}, or a cheaper "
            "model (list_models, estimate), or ask the human to raise the budget (request_budget_increase)."
        )


class LedgerUnavailableError(LedgerError):
    """The store could not complete an operation (locked, read-only, unreachable): nothing was changed."""


class UnknownPrincipalError(LedgerError):
    pass


class ReservationState(StrEnum):
    RESERVED = "reserved"
    SETTLED = "settled"
    RELEASED = "released"


@dataclass
class Reservation:
    id: str
    principal: str
    credits: int
    purpose: str
    task_id: str | None = None
    state: ReservationState = ReservationState.RESERVED
    charged: int | None = None
    modality: str | None = None
    own_key: bool = False  # made with the principal's own gateway key (resumed only when it brings one again)
    created_at: float = 0.0
    model: str | None = None
    gateway: str | None = None  # the gateway's URL it was made at: resumed only against that gateway
    lost_at: float | None = None  # unix time the task was marked lost (the gateway stopped knowing it)
    period_start: float = 0.0  # the budget period it was made in, and whose spending its charge counts in


@dataclass(frozen=True)
class Totals:
    budget: int
    spent: int
    reserved: int

    @property
    def remaining(self) -> int:
        return self.budget - self.spent - self.reserved


@dataclass(frozen=True)
class Event:
    """One line of the audit trail: a ledger change, who made it, and the principal's totals after it."""

    seq: int
    at: float
    principal: str
    kind: str  # reserve, attach, settle, release, budget, refuse, overcharge (a settle above its hold), policy,
    # period (a new one began), alert
    actor: str
    reservation_id: str | None
    credits: int | None
    totals: Totals
    detail: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class ReportRow:
    """Spend in a period, grouped by principal, model or UTC day: credits charged, paid calls, refusals."""

    key: str
    spent: int
    calls: int
    refusals: int


@dataclass(frozen=True)
class Hold:
    """What a reservation is for: its purpose, and the model, modality and gateway it is recorded with."""

    purpose: str
    model: str | None = None
    modality: str | None = None
    gateway: str | None = None
    own_key: bool = False


REPORT_BY = ("principal", "model", "day")


class LedgerStore(Protocol):
    """Budgets, reservations, the audit trail and seen callback signatures, each operation atomic."""

    async def ensure_principal(
        self, principal: str, budget: int, *, policy: Policy | None = None, now: float | None = None
    ) -> tuple[Totals, bool]:
        """The principal's totals, creating it with `budget` and `policy` (actor: configuration) if new; True
        if created."""
        ...

    async def reserve(
        self,
        principal: str,
        credits: int,
        purpose: str,
        *,
        own_key: bool = False,
        hold: Hold | None = None,
        now: float | None = None,
    ) -> Reservation:
        """Hold `credits` in the principal's current period (renewed first if `now` is past it), or record a
        `refuse` event, raise BudgetExceededError and hold nothing."""
        ...

    async def attach(self, reservation_id: str, task_id: str, modality: str | None = None) -> bool:
        """Tie an open reservation to the task it paid for; False if it is closed or unknown."""
        ...

    async def settle(
        self, reservation_id: str, charged: int, *, actor: str | None = None, detail: str | None = None
    ) -> bool:
        """Close at the real charge; False if already closed. Exactly once. A charge above the hold is recorded
        in full, with an `overcharge` event after the settle (its credits: the excess). `detail`: why. The charge
        counts in the period the reservation was made in: not in the current one if that has renewed since."""
        ...

    async def release(self, reservation_id: str, *, actor: str | None = None) -> bool:
        """Close unspent; False if already closed. Exactly once."""
        ...

    async def totals(self, principal: str, *, now: float | None = None) -> Totals:
        """Running totals, O(1), spent in the period current at `now`; UnknownPrincipalError if none."""
        ...

    async def policy(self, principal: str) -> Policy:
        """The principal's spending policy; UnknownPrincipalError if none."""
        ...

    async def set_policy(self, principal: str, policy: Policy, actor: str, *, now: float | None = None) -> Policy:
        """Change a known principal's policy (UnknownPrincipalError if none). A new period kind starts at `now`'s
        period, keeping what the current one has spent and the open reservations in it."""
        ...

    async def policies(self) -> dict[str, Policy]: ...

    async def claim_alert(self, principal: str, threshold: int, period_start: float) -> bool:
        """Record that the alert at `threshold` percent of the period was sent; False if it already was (by any
        process on this store): the caller that gets True sends it."""
        ...

    async def set_budget(self, principal: str, credits: int, actor: str) -> Totals:
        """Set (or create) a principal's budget. It may go below spent + reserved: that only refuses new holds."""
        ...

    async def principals(self) -> list[tuple[str, Totals]]: ...

    async def reservation(self, reservation_id: str) -> Reservation | None: ...

    async def task_reservation(self, principal: str, task_id: str) -> Reservation | None:
        """The principal's newest reservation tied to `task_id` (made by any process on this store)."""
        ...

    async def reservations(
        self,
        principal: str | None = None,
        *,
        open_only: bool = False,
        limit: int = 100,
        offset: int = 0,
        lost_only: bool = False,
    ) -> list[Reservation]:
        """Newest first, paged; `lost_only`: the open ones whose task was marked lost."""
        ...

    async def history(self, principal: str | None = None, *, limit: int = 1000, offset: int = 0) -> list[Event]:
        """The audit trail, oldest first, paged."""
        ...

    async def report(self, since: float, by: str) -> list[ReportRow]:
        """Credits charged, paid calls and refusals since `since` (epoch seconds), grouped `by` REPORT_BY."""
        ...

    async def mark_lost(self, reservation_id: str) -> bool:
        """Mark an open reservation's task lost (it stays counted); False if closed or already marked."""
        ...

    async def first_sighting(self, signature: str, *, keep_seconds: float) -> bool:
        """Remember a callback signature; False if seen within `keep_seconds` (a replay)."""
        ...

    async def aclose(self) -> None: ...


class Ledger:
    """One principal's view of the store: what the paid-call flow and the task watchers use."""

    def __init__(
        self,
        store: LedgerStore,
        principal: str,
        *,
        own_key: bool = False,
        gateway: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.principal, self.own_key, self.gateway = store, principal, own_key, gateway
        self.clock = clock
        self.changed: Callable[[str], None] | None = None  # told after a reservation or a charge (alerts.py)

    def _tell(self) -> None:
        if self.changed is not None:
            self.changed(self.principal)

    async def reserve(
        self, credits: int, purpose: str, *, model: str | None = None, modality: str | None = None
    ) -> Reservation:
        if credits < 0:
            raise ValueError("credits must be >= 0")
        hold = Hold(purpose, model, modality, self.gateway, self.own_key)
        with metrics.ledger_op("reserve"):
            reservation = await self.store.reserve(
                self.principal, credits, purpose, own_key=self.own_key, hold=hold, now=self.clock()
            )
        self._tell()
        return reservation

    async def attach(self, reservation: Reservation, task_id: str, modality: str | None = None) -> None:
        reservation.task_id, reservation.modality = task_id, modality or reservation.modality
        with metrics.ledger_op("attach"):
            await self.store.attach(reservation.id, task_id, modality)

    async def settle(self, reservation: Reservation, charged: int) -> bool:
        with metrics.ledger_op("settle"):
            closed = await self.store.settle(reservation.id, charged)
        if closed:
            reservation.state, reservation.charged = ReservationState.SETTLED, charged
            if charged > reservation.credits:
                log.error(
                    "overcharge: the gateway charged %d credits for the %s, over its hold of %d (reservation %s)",
                    charged,
                    reservation.purpose,
                    reservation.credits,
                    reservation.id,
                )
            self._tell()
        return closed

    async def release(self, reservation: Reservation) -> bool:
        with metrics.ledger_op("release"):
            closed = await self.store.release(reservation.id)
        if closed:
            reservation.state, reservation.charged = ReservationState.RELEASED, 0
        return closed

    async def mark_lost(self, reservation: Reservation) -> None:
        if await self.store.mark_lost(reservation.id):
            reservation.lost_at = time.time()

    async def totals(self) -> Totals:
        with metrics.ledger_op("totals"):
            return await self.store.totals(self.principal, now=self.clock())

    async def policy(self) -> Policy:
        return await self.store.policy(self.principal)

    async def task_reservation(self, task_id: str) -> Reservation | None:
        return await self.store.task_reservation(self.principal, task_id)

    async def open_reservations(self, limit: int = 100) -> list[Reservation]:
        return await self.store.reservations(self.principal, open_only=True, limit=limit)

    async def set_budget(self, credits: int, actor: str) -> Totals:
        return await self.store.set_budget(self.principal, credits, actor)
