"""Budget periods: calendar periods in UTC (a day, a week from Monday, a month) that a budget renews at.

A period is named by its kind and known by its start, in seconds since the epoch (0 for `none`, the one
period that never ends). Stores keep the start of each principal's current period and of the period each
reservation was made in; `rolled` says, for the time the server's clock gives, whether a new one has begun.
Nothing runs at the boundary: the first ledger operation after it renews the budget.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

Period = Literal["none", "day", "week", "month"]
PERIODS: tuple[str, ...] = get_args(Period)


def period_start(period: str, now: float) -> float:
    """The start of the `period` that contains `now` (0 for `none`)."""
    if period == "none":
        return 0.0
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day.timestamp()
    if period == "week":
        return (day - timedelta(days=day.weekday())).timestamp()
    if period == "month":
        return day.replace(day=1).timestamp()
    raise ValueError(f"unknown period '{period}' (one of {', '.join(PERIODS)})")


def period_end(period: str, start: float) -> float | None:
    """When the period that began at `start` ends (None for `none`)."""
    if period == "none":
        return None
    begun = datetime.fromtimestamp(start, UTC)
    if period == "day":
        return (begun + timedelta(days=1)).timestamp()
    if period == "week":
        return (begun + timedelta(days=7)).timestamp()
    following = begun.replace(year=begun.year + begun.month // 12, month=begun.month % 12 + 1)
    return following.timestamp()


def rolled(period: str, stored_start: float, now: float) -> float | None:
    """The start of a new period if `now` is past the stored one, else None. A clock behind the store's (another
    replica's) never moves a period back: the stored start stays the principal's current period."""
    start = period_start(period, now)
    return start if start > stored_start else None


def iso(at: float) -> str:
    """ISO 8601 in UTC, to the second, with a Z."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def label(period: str, start: float) -> str:
    """How a period is named in the audit trail and in alerts: `day 2026-12-06`, `none`."""
    return "none" if period == "none" else f"{period} {iso(start)[:10]}"
