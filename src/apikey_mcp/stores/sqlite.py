"""The SQLite ledger store: the hosted server's embedded default, one file on one machine.

Several processes may share one file: every operation is one `BEGIN IMMEDIATE` transaction (it takes the
file's write lock before reading, so two processes cannot both see room for the same credits) and waits
up to `busy_seconds` for another holder. WAL mode keeps readers from blocking the writer, and a commit
survives `kill -9`. Opening the file (and refusing one that is not ours) is sqlite_file.py's job.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ..budget import (
    CONFIGURATION,
    BudgetExceededError,
    Event,
    Hold,
    LedgerUnavailableError,
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
    event_of,
    new_reservation,
    overcharge_detail,
    principal_actor,
    refusal_detail,
    settle_detail,
    totals_of,
)
from .sqlite_file import open_ledger_file
from .statements import POLICY_COLUMNS, reservation_of
from .statements import SQLITE as SQL

_T = TypeVar("_T")
_REPORT_KEYS = {
    "principal": "principal",
    "model": "coalesce(model, '-')",
    "day": "strftime('%Y-%m-%d', at, 'unixepoch')",
}
_ADD_PRINCIPAL = (
    f"INSERT OR IGNORE INTO principals (name, budget, period_start, {POLICY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_HOLD = "UPDATE principals SET reserved = reserved + ? WHERE name = ? AND spent + reserved + ? <= budget"
_ADD_RESERVATION = (
    "INSERT INTO reservations (id, principal, credits, purpose, own_key, state, created_at, modality, model, gateway,"
    " period_start) VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?)"
)
_CLOSE = (
    "UPDATE reservations SET state = ?, charged = ?, closed_at = ? WHERE id = ? AND state = 'reserved'"
    " RETURNING principal, credits, model, period_start"
)
_MOVE_CREDITS = "UPDATE principals SET reserved = reserved - ?, spent = spent + ? WHERE name = ?"


class SqliteLedgerStore:
    """The ledger in one SQLite file, each operation one transaction in a worker thread."""

    def __init__(self, path: Path, *, busy_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self._conn = open_ledger_file(self.path, busy_seconds)
        self._lock = threading.Lock()

    async def _run(self, op: Callable[[sqlite3.Connection], _T], *, write: bool = True) -> _T:
        """One transaction in a worker thread, finished even if the caller is cancelled meanwhile. A write
        takes the file's write lock first (IMMEDIATE); a read does not, and WAL lets it run beside writers."""

        def transaction() -> _T:
            with self._lock:
                try:
                    self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
                    try:
                        result = op(self._conn)
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                    self._conn.execute("COMMIT")
                    return result
                except sqlite3.Error as exc:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise LedgerUnavailableError(f"the ledger file {self.path} cannot be written ({exc})") from None

        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(transaction)
        return result

    async def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """The rows of one read, beside any writer."""
        return await self._run(lambda c: c.execute(sql, params).fetchall(), write=False)

    async def ensure_principal(
        self, principal: str, budget: int, *, policy: Policy | None = None, now: float | None = None
    ) -> tuple[Totals, bool]:
        chosen, now = policy or Policy(), time.time() if now is None else now

        def op(c: sqlite3.Connection) -> tuple[Totals, bool]:
            created = c.execute(_ADD_PRINCIPAL, (principal, budget, period_start(chosen.period, now), *chosen.row()))
            if created.rowcount == 1:
                _log(c, principal, "budget", CONFIGURATION, None, budget)
                if chosen != Policy():
                    _log(c, principal, "policy", CONFIGURATION, None, None, chosen.describe())
            return _totals(c, principal), created.rowcount == 1

        return await self._run(op)

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
        r = new_reservation(principal, credits, purpose, own_key, hold)
        now = time.time() if now is None else now

        def op(c: sqlite3.Connection) -> BudgetExceededError | None:
            r.period_start = _roll(c, principal, now)  # kept even if the hold is refused
            if c.execute(_HOLD, (credits, principal, credits)).rowcount != 1:
                totals = _totals(c, principal)
                refused = BudgetExceededError(credits, max(totals.remaining, 0), totals.budget, purpose)
                why = refusal_detail(refused)
                _log(c, principal, "refuse", principal_actor(principal), None, credits, why, r.model)
                return refused  # the refusal is recorded (committed), then raised
            made = (r.id, principal, credits, purpose, int(own_key), r.created_at, r.modality, r.model, r.gateway)
            c.execute(_ADD_RESERVATION, (*made, r.period_start))
            _log(c, principal, "reserve", principal_actor(principal), r.id, credits, purpose, r.model)
            return None

        if (refused := await self._run(op)) is not None:
            raise refused
        return r

    async def attach(self, reservation_id: str, task_id: str, modality: str | None = None) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute(SQL.attach, (task_id, modality, reservation_id)).fetchone()
            if row is not None:
                _log(c, row[0], "attach", principal_actor(row[0]), reservation_id, None, task_id)
            return row is not None

        return await self._run(op)

    async def _close(
        self, reservation_id: str, state: ReservationState, charged: int, actor: str | None, detail: str | None = None
    ) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute(_CLOSE, (str(state), charged, time.time(), reservation_id)).fetchone()
            if row is None:
                return False
            principal, credits, model, made_in = row
            current = c.execute("SELECT period_start FROM principals WHERE name = ?", (principal,)).fetchone()[0]
            counted = charged if made_in == current else 0  # a charge counts in the period it was reserved in
            c.execute(_MOVE_CREDITS, (credits, counted, principal))
            kind = "settle" if state == ReservationState.SETTLED else "release"
            who = actor or principal_actor(principal)
            note = settle_detail(detail, None if made_in == current else made_in)
            _log(c, principal, kind, who, reservation_id, charged, note, model)
            if charged > credits:
                why = overcharge_detail(charged, credits, detail)
                _log(c, principal, "overcharge", who, reservation_id, charged - credits, why, model)
            return True

        return await self._run(op)

    async def settle(
        self, reservation_id: str, charged: int, *, actor: str | None = None, detail: str | None = None
    ) -> bool:
        check_charge(charged)
        return await self._close(reservation_id, ReservationState.SETTLED, charged, actor, detail)

    async def release(self, reservation_id: str, *, actor: str | None = None) -> bool:
        return await self._close(reservation_id, ReservationState.RELEASED, 0, actor)

    async def totals(self, principal: str, *, now: float | None = None) -> Totals:
        return await self._run(lambda c: _totals(c, principal, time.time() if now is None else now), write=False)

    async def policy(self, principal: str) -> Policy:
        rows = await self._read(SQL.policy, (principal,))
        if not rows:
            raise UnknownPrincipalError(f"no principal '{principal}'")
        return Policy.of(*rows[0])

    async def set_policy(self, principal: str, policy: Policy, actor: str, *, now: float | None = None) -> Policy:
        now = time.time() if now is None else now

        def op(c: sqlite3.Connection) -> Policy:
            current = _roll(c, principal, now)
            old = c.execute(SQL.kind_of_period, (principal,)).fetchone()[0]
            if policy.period != old:  # the new kind of period starts now, keeping what was spent and held in it
                start = period_start(policy.period, now)
                c.execute(SQL.move_open_holds, (start, principal, current))
                c.execute(SQL.move_period, (start, principal))
            c.execute(SQL.set_policy, (*policy.row(), principal))
            _log(c, principal, "policy", actor, None, None, policy.describe())
            return policy

        return await self._run(op)

    async def policies(self) -> dict[str, Policy]:
        return {name: Policy.of(*rest) for name, *rest in await self._read(SQL.policies)}

    async def claim_alert(self, principal: str, threshold: int, period_start: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            made = c.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?)", (principal, period_start, threshold, time.time())
            )
            if made.rowcount == 1:
                _log(c, principal, "alert", CONFIGURATION, None, None, f"{threshold}%")
            return made.rowcount == 1

        return await self._run(op)

    async def set_budget(self, principal: str, credits: int, actor: str) -> Totals:
        check_credits(credits, "a budget")

        def op(c: sqlite3.Connection) -> Totals:
            c.execute(SQL.set_budget, (principal, credits))
            _log(c, principal, "budget", actor, None, credits)
            return _totals(c, principal, time.time())

        return await self._run(op)

    async def principals(self) -> list[tuple[str, Totals]]:
        rows = await self._read(SQL.all_totals)
        now = time.time()  # spent in the period current now (none yet in one begun since the last change)
        return [(name, totals_of(name, tuple(rest), now)) for name, *rest in rows]

    async def reservation(self, reservation_id: str) -> Reservation | None:
        rows = await self._read(SQL.reservation, (reservation_id,))
        return reservation_of(rows[0]) if rows else None

    async def task_reservation(self, principal: str, task_id: str) -> Reservation | None:
        rows = await self._read(SQL.task_reservation, (task_id, principal))
        return reservation_of(rows[0]) if rows else None

    async def mark_lost(self, reservation_id: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute(SQL.mark_lost, (time.time(), reservation_id)).fetchone()
            if row is not None:
                _log(c, row[0], "lost", principal_actor(row[0]), reservation_id, None, row[1], row[2])
            return row is not None

        return await self._run(op)

    async def reservations(
        self,
        principal: str | None = None,
        *,
        open_only: bool = False,
        limit: int = 100,
        offset: int = 0,
        lost_only: bool = False,
    ) -> list[Reservation]:
        page = SQL.reservations_where(principal, open_only=open_only, lost_only=lost_only, limit=limit, offset=offset)
        return [reservation_of(r) for r in await self._read(*page)]

    async def history(self, principal: str | None = None, *, limit: int = 1000, offset: int = 0) -> list[Event]:
        return [event_of(row) for row in await self._read(*SQL.events_of(principal, limit=limit, offset=offset))]

    async def report(self, since: float, by: str) -> list[ReportRow]:
        rows = await self._read(SQL.report_by(_REPORT_KEYS[by]), (since,))
        return [ReportRow(str(k), int(sp), int(ca), int(rf)) for k, sp, ca, rf in rows]

    async def first_sighting(self, signature: str, *, keep_seconds: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            now = time.time()
            c.execute(SQL.forget_signatures, (now - keep_seconds,))
            return c.execute("INSERT OR IGNORE INTO callbacks VALUES (?, ?)", (signature, now)).rowcount == 1

        return await self._run(op)

    def close(self) -> None:
        """Close the file now (the store is not used again); `aclose` does it off the event loop."""
        self._conn.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)


def _log(
    c: sqlite3.Connection,
    principal: str,
    kind: str,
    actor: str,
    rid: str | None,
    credits: int | None,
    detail: str | None = None,
    model: str | None = None,
) -> None:
    """Add an audit line with the principal's totals after the change."""
    c.execute(SQL.log_event, (time.time(), kind, actor, rid, credits, detail, model, principal))


def _roll(c: sqlite3.Connection, principal: str, now: float) -> float:
    """Begin the period `now` is in if it is past the principal's; the current period's start."""
    row = c.execute(SQL.period_of, (principal,)).fetchone()
    if row is None:
        raise UnknownPrincipalError(f"no principal '{principal}'")
    period, stored, spent = row
    if (start := rolled(period, stored, now)) is None:
        return float(stored)
    c.execute(SQL.renew_period, (start, principal))
    _log(c, principal, "period", CONFIGURATION, None, spent, f"{label(period, stored)} ended with {spent} spent")
    return start


def _totals(c: sqlite3.Connection, principal: str, now: float | None = None) -> Totals:
    """The principal's totals; with `now`, spent in the period current then (0 in one begun since)."""
    return totals_of(principal, c.execute(SQL.totals, (principal,)).fetchone(), now)
