"""What every store shares: the refusal to open a store that is not ours, the checks on credits, a new
reservation and who made it, the wording of audit lines, and reading the rows the SQL stores have in common."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..budget import BudgetExceededError, Event, Hold, Reservation, Totals, UnknownPrincipalError
from ..errors import ConfigError
from ..periods import iso, rolled


class StoreRefusedError(ConfigError):
    """The configured store cannot be used as the ledger (empty, foreign, unreachable); the message says why."""


INT64_MAX = 2**63 - 1  # the largest number of credits a store keeps (PostgreSQL BIGINT, SQLite INTEGER)


def check_credits(value: object, what: str = "a number of credits") -> None:
    """Refuse what no store can keep as credits: not a whole number, negative, or beyond 64 bits."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT64_MAX:
        raise ValueError(f"{what} must be a whole number from 0 to {INT64_MAX}, not {value!r}")


def check_charge(charged: object) -> None:
    check_credits(charged, "a charge")


def overcharge_detail(charged: int, held: int, why: str | None) -> str:
    """The audit line of a settle above its hold."""
    return f"charged {charged} credits on a hold of {held}" + (f": {why}" if why else "")


def settle_detail(why: str | None, older_period: float | None) -> str | None:
    """The audit line of a close: the operator's reason, and the period it counts in when that is not the current
    one (a hold made before its budget renewed)."""
    parts = [why] if why else []
    parts += [f"period {iso(older_period)}"] if older_period is not None else []
    return "; ".join(parts) or None


def totals_of(principal: str, row: tuple[Any, ...] | None, now: float | None) -> Totals:
    """A principal's (budget, spent, reserved, period, period_start) row as totals; with `now`, spent in the
    period current then (0 in one begun since)."""
    if row is None:
        raise UnknownPrincipalError(f"no principal '{principal}'")
    budget, spent, reserved, period, stored = row
    renewed = now is not None and rolled(period, stored, now) is not None
    return Totals(budget, 0 if renewed else spent, reserved)


def event_of(row: tuple[Any, ...]) -> Event:
    """An audit trail row (seq, at, principal, kind, actor, reservation, credits, budget, spent, reserved, detail,
    model) as an event."""
    s, at, p, k, a, r, cr, b, sp, rs, d, m = row
    return Event(s, at, p, k, a, r, cr, Totals(b, sp, rs), d, m)


def new_reservation(
    principal: str, credits: int, purpose: str, own_key: bool, hold: Hold | None = None, period_start: float = 0.0
) -> Reservation:
    hold = hold or Hold(purpose)
    return Reservation(
        uuid.uuid4().hex,
        principal,
        credits,
        purpose,
        own_key=own_key,
        created_at=time.time(),
        modality=hold.modality,
        model=hold.model,
        gateway=hold.gateway,
        period_start=period_start,
    )


def refusal_detail(exc: BudgetExceededError) -> str:
    """The reason a `refuse` event records."""
    return f"over budget: {exc.purpose} needs {exc.needed} credits, {exc.remaining} remain"


def principal_actor(principal: str) -> str:
    """The actor recorded for the server acting on a principal's call."""
    return f"principal:{principal}"
