"""The in-memory ledger store: a server built with no ledger file (tests, embedding), whose budget ends with it.

Every operation runs without an await inside, so it is atomic on the event loop. Closed reservations and
the audit trail keep only their newest entries (bounded); open reservations are what the budget holds.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from datetime import UTC, datetime

from ..budget import (
    CONFIGURATION,
    BudgetExceededError,
    Event,
    Hold,
    ReportRow,
    Reservation,
    ReservationState,
    Totals,
    UnknownPrincipalError,
)
from ..periods import label, period_start, rolled
from ..policy import Policy
from .common import (
    check_charge,
    check_credits,
    new_reservation,
    overcharge_detail,
    principal_actor,
    refusal_detail,
    settle_detail,
)

MAX_CLOSED = 10_000
MAX_EVENTS = 10_000
MAX_SIGNATURES = 100_000
MAX_ALERTS = 100_000


class _Account:
    """One principal's budget, running totals, policy and current period."""

    __slots__ = ("budget", "period_start", "policy", "reserved", "spent")

    def __init__(self, budget: int, policy: Policy | None = None, now: float = 0.0) -> None:
        self.budget, self.spent, self.reserved = budget, 0, 0
        self.policy = policy or Policy()
        self.period_start = period_start(self.policy.period, now)

    def totals(self, now: float | None = None) -> Totals:
        """Spent in the period current at `now` (none yet in one that has begun since the last change)."""
        renewed = now is not None and rolled(self.policy.period, self.period_start, now) is not None
        return Totals(self.budget, 0 if renewed else self.spent, self.reserved)


class MemoryLedgerStore:
    """A ledger kept in the process and gone with it (a server built with no ledger file)."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        self._open: dict[str, Reservation] = {}
        self._closed: OrderedDict[str, Reservation] = OrderedDict()
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._alerts: OrderedDict[tuple[str, float, int], None] = OrderedDict()

    def _log(
        self,
        principal: str,
        kind: str,
        actor: str,
        rid: str | None,
        credits: int | None,
        d: str | None = None,
        model: str | None = None,
    ) -> None:
        self._seq += 1
        totals = self._accounts[principal].totals()
        self._events.append(Event(self._seq, time.time(), principal, kind, actor, rid, credits, totals, d, model))

    async def ensure_principal(
        self, principal: str, budget: int, *, policy: Policy | None = None, now: float | None = None
    ) -> tuple[Totals, bool]:
        if (account := self._accounts.get(principal)) is not None:
            return account.totals(), False
        self._accounts[principal] = _Account(budget, policy, time.time() if now is None else now)
        self._log(principal, "budget", CONFIGURATION, None, budget)
        if policy is not None and policy != Policy():
            self._log(principal, "policy", CONFIGURATION, None, None, policy.describe())
        return self._accounts[principal].totals(), True

    def _roll(self, principal: str, account: _Account, now: float) -> None:
        """Begin the period `now` is in, if it is past the account's: spending starts again from 0."""
        if (start := rolled(account.policy.period, account.period_start, now)) is None:
            return
        ended, spent = label(account.policy.period, account.period_start), account.spent
        account.period_start, account.spent = start, 0
        self._log(principal, "period", CONFIGURATION, None, spent, f"{ended} ended with {spent} spent")

    def _account(self, principal: str) -> _Account:
        try:
            return self._accounts[principal]
        except KeyError:
            raise UnknownPrincipalError(f"no principal '{principal}'") from None

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
        account = self._account(principal)
        self._roll(principal, account, time.time() if now is None else now)
        remaining = account.budget - account.spent - account.reserved
        model = hold.model if hold else None
        if credits > remaining:
            refused = BudgetExceededError(credits, max(remaining, 0), account.budget, purpose)
            self._log(principal, "refuse", principal_actor(principal), None, credits, refusal_detail(refused), model)
            raise refused
        reservation = new_reservation(principal, credits, purpose, own_key, hold, account.period_start)
        account.reserved += credits
        self._open[reservation.id] = reservation
        self._log(principal, "reserve", principal_actor(principal), reservation.id, credits, purpose, model)
        return _copy(reservation)

    async def attach(self, reservation_id: str, task_id: str, modality: str | None = None) -> bool:
        reservation = self._open.get(reservation_id)
        if reservation is None:
            return False
        reservation.task_id, reservation.modality = task_id, modality or reservation.modality
        self._log(
            reservation.principal, "attach", principal_actor(reservation.principal), reservation_id, None, task_id
        )
        return True

    def _close(
        self, reservation_id: str, state: ReservationState, charged: int, actor: str | None, detail: str | None = None
    ) -> bool:
        reservation = self._open.pop(reservation_id, None)
        if reservation is None:
            return False
        account = self._accounts[reservation.principal]
        account.reserved -= reservation.credits
        current = reservation.period_start == account.period_start
        account.spent += charged if current else 0  # a charge counts in the period its reservation was made in
        reservation.state, reservation.charged = state, charged
        self._closed[reservation_id] = reservation
        while len(self._closed) > MAX_CLOSED:
            self._closed.popitem(last=False)
        kind = "settle" if state == ReservationState.SETTLED else "release"
        who = actor or principal_actor(reservation.principal)
        note = settle_detail(detail, None if current else reservation.period_start)
        self._log(reservation.principal, kind, who, reservation_id, charged, note, reservation.model)
        if charged > reservation.credits:
            self._log(
                reservation.principal,
                "overcharge",
                who,
                reservation_id,
                charged - reservation.credits,
                overcharge_detail(charged, reservation.credits, detail),
                reservation.model,
            )
        return True

    async def settle(
        self, reservation_id: str, charged: int, *, actor: str | None = None, detail: str | None = None
    ) -> bool:
        check_charge(charged)
        return self._close(reservation_id, ReservationState.SETTLED, charged, actor, detail)

    async def release(self, reservation_id: str, *, actor: str | None = None) -> bool:
        return self._close(reservation_id, ReservationState.RELEASED, 0, actor)

    async def totals(self, principal: str, *, now: float | None = None) -> Totals:
        return self._account(principal).totals(time.time() if now is None else now)

    async def policy(self, principal: str) -> Policy:
        return self._account(principal).policy

    async def set_policy(self, principal: str, policy: Policy, actor: str, *, now: float | None = None) -> Policy:
        account, now = self._account(principal), time.time() if now is None else now
        self._roll(principal, account, now)
        if policy.period != account.policy.period:  # the new kind of period starts now, keeping what was spent
            start = period_start(policy.period, now)
            for reservation in self._open.values():
                if reservation.principal == principal and reservation.period_start == account.period_start:
                    reservation.period_start = start
            account.period_start = start
        account.policy = policy
        self._log(principal, "policy", actor, None, None, policy.describe())
        return policy

    async def policies(self) -> dict[str, Policy]:
        return {name: account.policy for name, account in sorted(self._accounts.items())}

    async def claim_alert(self, principal: str, threshold: int, period_start: float) -> bool:
        key = (principal, period_start, threshold)
        if key in self._alerts:
            return False
        self._alerts[key] = None
        while len(self._alerts) > MAX_ALERTS:
            self._alerts.popitem(last=False)
        self._log(principal, "alert", CONFIGURATION, None, None, f"{threshold}%")
        return True

    async def set_budget(self, principal: str, credits: int, actor: str) -> Totals:
        check_credits(credits, "a budget")
        account = self._accounts.setdefault(principal, _Account(credits, now=time.time()))
        account.budget = credits
        self._log(principal, "budget", actor, None, credits)
        return account.totals(time.time())

    async def principals(self) -> list[tuple[str, Totals]]:
        now = time.time()  # spent in the period current now (none yet in one begun since the last change)
        return sorted((name, account.totals(now)) for name, account in self._accounts.items())

    async def reservation(self, reservation_id: str) -> Reservation | None:
        found = self._open.get(reservation_id) or self._closed.get(reservation_id)
        return _copy(found) if found else None

    async def task_reservation(self, principal: str, task_id: str) -> Reservation | None:
        found = [
            r
            for r in [*self._open.values(), *self._closed.values()]
            if r.principal == principal and r.task_id == task_id
        ]
        return _copy(max(found, key=lambda r: r.created_at)) if found else None

    async def mark_lost(self, reservation_id: str) -> bool:
        reservation = self._open.get(reservation_id)
        if reservation is None or reservation.lost_at is not None:
            return False
        reservation.lost_at = time.time()
        self._log(
            reservation.principal,
            "lost",
            principal_actor(reservation.principal),
            reservation_id,
            None,
            reservation.task_id,
            reservation.model,
        )
        return True

    async def reservations(
        self,
        principal: str | None = None,
        *,
        open_only: bool = False,
        limit: int = 100,
        offset: int = 0,
        lost_only: bool = False,
    ) -> list[Reservation]:
        pool = list(self._open.values()) if open_only or lost_only else [*self._open.values(), *self._closed.values()]
        chosen = [r for r in pool if (principal is None or r.principal == principal) and (r.lost_at or not lost_only)]
        chosen.sort(key=lambda r: r.created_at, reverse=True)
        return [_copy(r) for r in chosen[offset : offset + limit]]

    async def history(self, principal: str | None = None, *, limit: int = 1000, offset: int = 0) -> list[Event]:
        chosen = [e for e in self._events if principal is None or e.principal == principal]
        return chosen[offset : offset + limit]

    async def report(self, since: float, by: str) -> list[ReportRow]:
        spent: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        refusals: Counter[str] = Counter()
        for e in self._events:
            if e.at < since or e.kind not in ("reserve", "settle", "refuse"):
                continue
            key = report_key(e, by)
            if e.kind == "settle":
                spent[key] += e.credits or 0
            counter = calls if e.kind == "reserve" else refusals if e.kind == "refuse" else Counter()
            counter[key] += 1
        keys = sorted({*spent, *calls, *refusals})
        return [ReportRow(k, spent[k], calls[k], refusals[k]) for k in keys]

    async def first_sighting(self, signature: str, *, keep_seconds: float) -> bool:
        now = time.time()
        while self._seen and (next(iter(self._seen.values())) < now - keep_seconds or len(self._seen) > MAX_SIGNATURES):
            self._seen.popitem(last=False)
        if signature in self._seen:
            return False
        self._seen[signature] = now
        return True

    async def aclose(self) -> None:
        pass


def report_key(event: Event, by: str) -> str:
    if by == "principal":
        return event.principal
    if by == "model":
        return event.model or "-"
    return datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d")


def _copy(reservation: Reservation) -> Reservation:
    """Callers get their own copy: the store's record changes only through the store."""
    return Reservation(**vars(reservation))
