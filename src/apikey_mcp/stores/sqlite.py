"""The SQLite ledger store: the hosted server's embedded default, one file on one machine.

Several processes may share one file: every operation is one `BEGIN IMMEDIATE` transaction (it takes the
file's write lock before reading, so two processes cannot both see room for the same credits) and waits
up to `busy_seconds` for another holder. WAL mode keeps readers from blocking the writer, and a commit
survives `kill -9`. A file that is empty, not SQLite, or another program's is refused, never reset.
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
    new_reservation,
    principal_actor,
    refusal_detail,
)
from ..periods import label, period_start, rolled
from ..policy import Policy
from .common import (
    StoreRefusedError,
    check_charge,
    check_credits,
    event_of,
    overcharge_detail,
    settle_detail,
    totals_of,
)
from .migrate import is_v1, migrate_v1
from .upgrades import BASE_VERSION, upgrade_sqlite

_T = TypeVar("_T")
APPLICATION_ID = 0x41504B4D  # 'APKM': marks the file as ours
SCHEMA_VERSION = BASE_VERSION  # the base schema below; later changes are steps in upgrades.py

_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY, budget INTEGER NOT NULL CHECK (budget >= 0), spent INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0));
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL REFERENCES principals(name), credits INTEGER NOT NULL,
    purpose TEXT NOT NULL, task_id TEXT, modality TEXT, own_key INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,
    charged INTEGER, created_at REAL NOT NULL, closed_at REAL);
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (created_at) WHERE state = 'reserved';
CREATE INDEX IF NOT EXISTS reservations_by_principal ON reservations (principal, created_at);
CREATE INDEX IF NOT EXISTS reservations_by_task ON reservations (task_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, principal TEXT NOT NULL, kind TEXT NOT NULL,
    actor TEXT NOT NULL, reservation_id TEXT, credits INTEGER, budget INTEGER NOT NULL, spent INTEGER NOT NULL,
    reserved INTEGER NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS callbacks (signature TEXT PRIMARY KEY, received_at REAL NOT NULL);
"""
_COLUMNS = (
    "id, principal, credits, purpose, task_id, state, charged, modality, own_key, created_at, model, gateway, lost_at,"
    " period_start"
)
_REPORT_KEYS = {
    "principal": "principal",
    "model": "coalesce(model, '-')",
    "day": "strftime('%Y-%m-%d', at, 'unixepoch')",
}
_POLICY = "max_per_call, allow, period, alert_at"


class SqliteLedgerStore:
    def __init__(self, path: Path, *, busy_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self._conn = _open(self.path, busy_seconds)
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

    def _log(
        self,
        c: sqlite3.Connection,
        principal: str,
        kind: str,
        actor: str,
        rid: str | None,
        credits: int | None,
        detail: str | None = None,
        model: str | None = None,
    ) -> None:
        c.execute(
            "INSERT INTO events (at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail,"
            " model) SELECT ?, name, ?, ?, ?, ?, budget, spent, reserved, ?, ? FROM principals WHERE name = ?",
            (time.time(), kind, actor, rid, credits, detail, model, principal),
        )

    async def ensure_principal(
        self, principal: str, budget: int, *, policy: Policy | None = None, now: float | None = None
    ) -> tuple[Totals, bool]:
        chosen, now = policy or Policy(), time.time() if now is None else now

        def op(c: sqlite3.Connection) -> tuple[Totals, bool]:
            created = c.execute(
                f"INSERT OR IGNORE INTO principals (name, budget, period_start, {_POLICY})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (principal, budget, period_start(chosen.period, now), *chosen.row()),
            )
            if created.rowcount == 1:
                self._log(c, principal, "budget", CONFIGURATION, None, budget)
                if chosen != Policy():
                    self._log(c, principal, "policy", CONFIGURATION, None, None, chosen.describe())
            return _totals(c, principal), created.rowcount == 1

        return await self._run(op)

    def _roll(self, c: sqlite3.Connection, principal: str, now: float) -> float:
        """Begin the period `now` is in if it is past the principal's; the current period's start."""
        row = c.execute("SELECT period, period_start, spent FROM principals WHERE name = ?", (principal,)).fetchone()
        if row is None:
            raise UnknownPrincipalError(f"no principal '{principal}'")
        period, stored, spent = row
        if (start := rolled(period, stored, now)) is None:
            return float(stored)
        c.execute("UPDATE principals SET period_start = ?, spent = 0 WHERE name = ?", (start, principal))
        ended = f"{label(period, stored)} ended with {spent} spent"
        self._log(c, principal, "period", CONFIGURATION, None, spent, ended)
        return start

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
        reservation = new_reservation(principal, credits, purpose, own_key, hold)
        r = reservation
        now = time.time() if now is None else now

        def op(c: sqlite3.Connection) -> BudgetExceededError | None:
            reservation.period_start = self._roll(c, principal, now)  # kept even if the hold is refused
            held = c.execute(
                "UPDATE principals SET reserved = reserved + ? WHERE name = ? AND spent + reserved + ? <= budget",
                (credits, principal, credits),
            )
            if held.rowcount != 1:
                totals = _totals(c, principal)
                refused = BudgetExceededError(credits, max(totals.remaining, 0), totals.budget, purpose)
                self._log(
                    c, principal, "refuse", principal_actor(principal), None, credits, refusal_detail(refused), r.model
                )
                return refused  # the refusal is recorded (committed), then raised
            c.execute(
                "INSERT INTO reservations (id, principal, credits, purpose, own_key, state, created_at, modality,"
                " model, gateway, period_start) VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?)",
                (
                    r.id,
                    principal,
                    credits,
                    purpose,
                    int(own_key),
                    r.created_at,
                    r.modality,
                    r.model,
                    r.gateway,
                    r.period_start,
                ),
            )
            self._log(c, principal, "reserve", principal_actor(principal), r.id, credits, purpose, r.model)
            return None

        if (refused := await self._run(op)) is not None:
            raise refused
        return reservation

    async def attach(self, reservation_id: str, task_id: str, modality: str | None = None) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "UPDATE reservations SET task_id = ?, modality = coalesce(?, modality)"
                " WHERE id = ? AND state = 'reserved' RETURNING principal",
                (task_id, modality, reservation_id),
            ).fetchone()
            if row is not None:
                self._log(c, row[0], "attach", principal_actor(row[0]), reservation_id, None, task_id)
            return row is not None

        return await self._run(op)

    async def _close(
        self, reservation_id: str, state: ReservationState, charged: int, actor: str | None, detail: str | None = None
    ) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "UPDATE reservations SET state = ?, charged = ?, closed_at = ? WHERE id = ? AND state = 'reserved'"
                " RETURNING principal, credits, model, period_start",
                (str(state), charged, time.time(), reservation_id),
            ).fetchone()
            if row is None:
                return False
            principal, credits, model, made_in = row
            current = c.execute("SELECT period_start FROM principals WHERE name = ?", (principal,)).fetchone()[0]
            counted = charged if made_in == current else 0  # a charge counts in the period it was reserved in
            c.execute(
                "UPDATE principals SET reserved = reserved - ?, spent = spent + ? WHERE name = ?",
                (credits, counted, principal),
            )
            kind = "settle" if state == ReservationState.SETTLED else "release"
            who = actor or principal_actor(principal)
            note = settle_detail(detail, None if made_in == current else made_in)
            self._log(c, principal, kind, who, reservation_id, charged, note, model)
            if charged > credits:
                self._log(
                    c,
                    principal,
                    "overcharge",
                    who,
                    reservation_id,
                    charged - credits,
                    overcharge_detail(charged, credits, detail),
                    model,
                )
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
        row = await self._run(
            lambda c: c.execute(f"SELECT {_POLICY} FROM principals WHERE name = ?", (principal,)).fetchone(),
            write=False,
        )
        if row is None:
            raise UnknownPrincipalError(f"no principal '{principal}'")
        return Policy.of(*row)

    async def set_policy(self, principal: str, policy: Policy, actor: str, *, now: float | None = None) -> Policy:
        now = time.time() if now is None else now

        def op(c: sqlite3.Connection) -> Policy:
            current = self._roll(c, principal, now)
            old = c.execute("SELECT period FROM principals WHERE name = ?", (principal,)).fetchone()[0]
            if policy.period != old:  # the new kind of period starts now, keeping what was spent and held in it
                start = period_start(policy.period, now)
                c.execute(
                    "UPDATE reservations SET period_start = ? WHERE principal = ? AND state = 'reserved'"
                    " AND period_start = ?",
                    (start, principal, current),
                )
                c.execute("UPDATE principals SET period_start = ? WHERE name = ?", (start, principal))
            c.execute(
                "UPDATE principals SET max_per_call = ?, allow = ?, period = ?, alert_at = ? WHERE name = ?",
                (*policy.row(), principal),
            )
            self._log(c, principal, "policy", actor, None, None, policy.describe())
            return policy

        return await self._run(op)

    async def policies(self) -> dict[str, Policy]:
        rows = await self._run(
            lambda c: c.execute(f"SELECT name, {_POLICY} FROM principals ORDER BY name").fetchall(), write=False
        )
        return {name: Policy.of(*rest) for name, *rest in rows}

    async def claim_alert(self, principal: str, threshold: int, period_start: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            made = c.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?)", (principal, period_start, threshold, time.time())
            )
            if made.rowcount == 1:
                self._log(c, principal, "alert", CONFIGURATION, None, None, f"{threshold}%")
            return made.rowcount == 1

        return await self._run(op)

    async def set_budget(self, principal: str, credits: int, actor: str) -> Totals:
        check_credits(credits, "a budget")

        def op(c: sqlite3.Connection) -> Totals:
            c.execute(
                "INSERT INTO principals (name, budget) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET budget = ?",
                (principal, credits, credits),
            )
            self._log(c, principal, "budget", actor, None, credits)
            return _totals(c, principal, time.time())

        return await self._run(op)

    async def principals(self) -> list[tuple[str, Totals]]:
        query = "SELECT name, budget, spent, reserved, period, period_start FROM principals ORDER BY name"
        rows = await self._run(lambda c: c.execute(query).fetchall(), write=False)
        now = time.time()  # spent in the period current now (none yet in one begun since the last change)
        return [(name, totals_of(name, tuple(rest), now)) for name, *rest in rows]

    async def reservation(self, reservation_id: str) -> Reservation | None:
        row = await self._run(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM reservations WHERE id = ?", (reservation_id,)).fetchone(),
            write=False,
        )
        return _reservation(row) if row else None

    async def task_reservation(self, principal: str, task_id: str) -> Reservation | None:
        sql = (
            f"SELECT {_COLUMNS} FROM reservations WHERE task_id = ? AND principal = ? ORDER BY created_at DESC LIMIT 1"
        )
        row = await self._run(lambda c: c.execute(sql, (task_id, principal)).fetchone(), write=False)
        return _reservation(row) if row else None

    async def mark_lost(self, reservation_id: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "UPDATE reservations SET lost_at = ? WHERE id = ? AND state = 'reserved' AND lost_at IS NULL"
                " RETURNING principal, task_id, model",
                (time.time(), reservation_id),
            ).fetchone()
            if row is not None:
                self._log(c, row[0], "lost", principal_actor(row[0]), reservation_id, None, row[1], row[2])
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
        where = ["1 = 1"] + ["principal = ?"] * (principal is not None) + ["state = 'reserved'"] * open_only
        where += ["state = 'reserved' AND lost_at IS NOT NULL"] * lost_only
        sql = (
            f"SELECT {_COLUMNS} FROM reservations WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT ? OFFSET ?"
        )
        params = [*([principal] if principal is not None else []), limit, offset]
        return [_reservation(r) for r in await self._run(lambda c: c.execute(sql, params).fetchall(), write=False)]

    async def history(self, principal: str | None = None, *, limit: int = 1000, offset: int = 0) -> list[Event]:
        where, params = ("WHERE principal = ?", [principal]) if principal is not None else ("", [])
        sql = (
            f"SELECT seq, at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail,"
            f" model FROM events {where} ORDER BY seq LIMIT ? OFFSET ?"
        )
        rows = await self._run(lambda c: c.execute(sql, [*params, limit, offset]).fetchall(), write=False)
        return [event_of(row) for row in rows]

    async def report(self, since: float, by: str) -> list[ReportRow]:
        key = _REPORT_KEYS[by]
        sql = (
            f"SELECT {key} AS k, coalesce(sum(CASE WHEN kind = 'settle' THEN credits END), 0),"
            " count(*) FILTER (WHERE kind = 'reserve'), count(*) FILTER (WHERE kind = 'refuse') FROM events"
            " WHERE at >= ? AND kind IN ('reserve', 'settle', 'refuse') GROUP BY k ORDER BY k"
        )
        rows = await self._run(lambda c: c.execute(sql, (since,)).fetchall(), write=False)
        return [ReportRow(str(k), int(sp), int(ca), int(rf)) for k, sp, ca, rf in rows]

    async def first_sighting(self, signature: str, *, keep_seconds: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            now = time.time()
            c.execute("DELETE FROM callbacks WHERE received_at < ?", (now - keep_seconds,))
            return c.execute("INSERT OR IGNORE INTO callbacks VALUES (?, ?)", (signature, now)).rowcount == 1

        return await self._run(op)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._conn.close)


def _totals(c: sqlite3.Connection, principal: str, now: float | None = None) -> Totals:
    """The principal's totals; with `now`, spent in the period current then (0 in one begun since)."""
    row = c.execute(
        "SELECT budget, spent, reserved, period, period_start FROM principals WHERE name = ?", (principal,)
    ).fetchone()
    return totals_of(principal, row, now)


def _reservation(row: tuple[Any, ...]) -> Reservation:
    id_, principal, credits, purpose, task_id, state, charged, modality, own_key, created_at, *rest = row
    model, gateway, lost_at, made_in = rest
    return Reservation(
        id_,
        principal,
        credits,
        purpose,
        task_id,
        ReservationState(state),
        charged,
        modality,
        bool(own_key),
        created_at,
        model=model,
        gateway=gateway,
        lost_at=lost_at,
        period_start=made_in,
    )


def _open(path: Path, busy_seconds: float) -> sqlite3.Connection:
    """Connect, refusing a file that is not ours; a new file gets the schema."""
    if path.exists() and path.stat().st_size == 0:
        raise StoreRefusedError(
            f"The state file {path} is empty (0 bytes). Refusing to start, since starting afresh would reset "
            "every budget: restore it from a backup, or delete it to start with new budgets."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=busy_seconds, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:  # a directory, no permission, a read-only place
        raise StoreRefusedError(
            f"The state file {path} cannot be opened ({exc}): point --state-file at a file "
            "this user may create and write."
        ) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
        owner = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if owner != APPLICATION_ID and is_v1(conn, tables):
            migrate_v1(conn, _SCHEMA, APPLICATION_ID, SCHEMA_VERSION)
            owner = APPLICATION_ID
        if owner != APPLICATION_ID and tables:
            raise StoreRefusedError(
                f"The state file {path} is not an apikey-mcp ledger (application id {owner:#x}, tables "
                f"{', '.join(sorted(tables))}). Refusing to start: point --state-file at the right file."
            )
        conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer; commits survive kill -9
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if owner != APPLICATION_ID:
            conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
                f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        upgrade_sqlite(conn)
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        conn.close()
        raise StoreRefusedError(
            f"The state file {path} cannot be used as the ledger ({exc}): refusing to start."
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn
