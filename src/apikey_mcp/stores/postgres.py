"""The PostgreSQL ledger store, for operators who run several server processes or machines.

A reservation is one conditional UPDATE that adds to `reserved` only where `spent + reserved + credits
<= budget`: PostgreSQL re-checks the condition on the row it locked, so no number of concurrent
processes can overspend. Settle and release update the reservation only while it is still open and move
its credits on the principal's row in the same statement, so each happens exactly once. psycopg 3 async,
with its connection pool; tables are prefixed `apikey_` so the database may be shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
from .common import StoreRefusedError, check_charge, check_credits, event_of, totals_of
from .upgrades import POSTGRES_VERSION_TABLE, upgrade_postgres

log = logging.getLogger(__name__)
_T = TypeVar("_T")
OUTAGE_SECONDS = 1.0  # an operation waits this long for a working connection, then the ledger is unavailable
_Conn = psycopg.AsyncConnection[Any]
_SCHEMA = """
SELECT pg_advisory_xact_lock(1095781197);
CREATE TABLE IF NOT EXISTS apikey_principals (
    name TEXT PRIMARY KEY, budget BIGINT NOT NULL CHECK (budget >= 0), spent BIGINT NOT NULL DEFAULT 0,
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0));
CREATE TABLE IF NOT EXISTS apikey_reservations (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL REFERENCES apikey_principals (name), credits BIGINT NOT NULL,
    purpose TEXT NOT NULL, task_id TEXT, modality TEXT, own_key BOOLEAN NOT NULL DEFAULT FALSE,
    state TEXT NOT NULL, charged BIGINT, created_at DOUBLE PRECISION NOT NULL, closed_at DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS apikey_reservations_open ON apikey_reservations (created_at) WHERE state = 'reserved';
CREATE INDEX IF NOT EXISTS apikey_reservations_by_principal ON apikey_reservations (principal, created_at);
CREATE INDEX IF NOT EXISTS apikey_reservations_by_task ON apikey_reservations (task_id);
CREATE TABLE IF NOT EXISTS apikey_events (
    seq BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, principal TEXT NOT NULL, kind TEXT NOT NULL,
    actor TEXT NOT NULL, reservation_id TEXT, credits BIGINT, budget BIGINT NOT NULL, spent BIGINT NOT NULL,
    reserved BIGINT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS apikey_callbacks (signature TEXT PRIMARY KEY, received_at DOUBLE PRECISION NOT NULL);
"""
_COLUMNS = (
    "id, principal, credits, purpose, task_id, state, charged, modality, own_key, created_at, model, gateway, lost_at,"
    " period_start"
)
_POLICY = "max_per_call, allow, period, alert_at"
_LOG = (
    "INSERT INTO apikey_events (at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail,"
    " model) SELECT %s, name, %s, %s, %s, %s, budget, spent, reserved, %s, %s FROM apikey_principals WHERE name = %s"
)
_REPORT_KEYS = {
    "principal": "principal",
    "model": "coalesce(model, '-')",
    "day": "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}

# A reservation in one statement, one round trip: the conditional UPDATE decides; the reservation and its
# audit line are inserted only from the row it returned. It holds only while the principal's period is current
# at the server's time (the starts of the day, week and month then are passed in): when a new one is due, no
# row comes back and `reserve` renews the period first, in a transaction (once per period).
_RESERVE = """
WITH held AS (
    UPDATE apikey_principals SET reserved = reserved + %(c)s
    WHERE name = %(p)s AND spent + reserved + %(c)s <= budget AND period_start >=
        CASE period WHEN 'day' THEN %(day)s WHEN 'week' THEN %(week)s WHEN 'month' THEN %(month)s ELSE 0 END
    RETURNING name, budget, spent, reserved, period_start),
made AS (
    INSERT INTO apikey_reservations (id, principal, credits, purpose, own_key, state, created_at, modality, model,
                                     gateway, period_start)
    SELECT %(id)s, name, %(c)s, %(purpose)s, %(own)s, 'reserved', %(t)s, %(modality)s, %(model)s, %(gateway)s,
           period_start
    FROM held RETURNING id)
INSERT INTO apikey_events (at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail,
                           model)
SELECT %(t)s, name, 'reserve', %(actor)s, %(id)s, %(c)s, budget, spent, reserved, %(purpose)s, %(model)s FROM held
RETURNING (SELECT period_start FROM held)
"""
# Settle or release exactly once: only while the reservation is open, moving its credits in the same statement.
# The charge counts in the period the reservation was made in: not in the current one if that has renewed since.
# A charge above the hold adds an `overcharge` line (its credits: the excess) after the settle's.
_CLOSE = """
WITH closed AS (
    UPDATE apikey_reservations SET state = %(s)s, charged = %(ch)s, closed_at = %(t)s
    WHERE id = %(id)s AND state = 'reserved' RETURNING principal, credits, model, period_start),
moved AS (
    UPDATE apikey_principals p SET reserved = p.reserved - closed.credits,
        spent = p.spent + CASE WHEN p.period_start = closed.period_start THEN %(ch)s ELSE 0 END
    FROM closed WHERE p.name = closed.principal
    RETURNING p.name, p.budget, p.spent, p.reserved, closed.credits AS held, closed.model,
        CASE WHEN p.period_start = closed.period_start THEN NULL
        ELSE 'period ' || to_char(to_timestamp(closed.period_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        END AS detail)
INSERT INTO apikey_events (at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail, model)
SELECT %(t)s, name, %(kind)s, coalesce(%(actor)s, 'principal:' || name), %(id)s, %(ch)s, budget, spent, reserved,
       detail, model
FROM moved
UNION ALL
SELECT %(t)s, name, 'overcharge', coalesce(%(actor)s, 'principal:' || name), %(id)s, %(ch)s - held, budget, spent,
       reserved, 'charged ' || %(ch)s || ' credits on a hold of ' || held, model
FROM moved WHERE %(ch)s > held
RETURNING seq
"""
# The operator's reason for a close, on the lines the close wrote (before a settle's period note).
_WHY = """
UPDATE apikey_events SET detail = CASE WHEN kind = 'overcharge' THEN detail || ': ' || %(why)s
    WHEN detail IS NULL THEN %(why)s ELSE %(why)s || '; ' || detail END
WHERE seq = ANY(%(seqs)s)
"""


class PostgresLedgerStore:
    def __init__(self, url: str, *, max_size: int = 10, timeout: float = 15.0, wait: float = OUTAGE_SECONDS) -> None:
        """The pool is built closed: `open()` connects (in the server's lifespan, or `connect()`). `timeout`
        bounds the first connection, and how long an operation waits its turn for a connection while the
        database is up but busy; `wait`, how long it waits while the database is unreachable (an outage).

        Survives restarts of the database: a pooled connection is checked before use (a dead one, left by a
        restart or pg_terminate_backend, is replaced), and a failed reconnection gives up after `wait` so the
        next operation tries afresh instead of waiting for the pool's growing backoff."""
        self._timeout, self._url, self._wait = timeout, url, wait
        self.down = False  # a connection failed (check, connect or use) and none has worked since
        self._pool = _Pool(
            self,
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=wait,
            reconnect_timeout=wait,
            check=self._check,
            configure=self._connected,
            kwargs={"connect_timeout": max(1, int(wait)), "autocommit": True},
        )

    async def _check(self, conn: _Conn) -> None:
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            self.down = True
            raise

    async def _connected(self, conn: _Conn) -> None:
        self.down = False

    @classmethod
    async def connect(cls, url: str, **options: Any) -> PostgresLedgerStore:
        store = cls(url, **options)
        await store.open()
        return store

    async def open(self) -> None:
        """Connect and create the tables if they are missing; refuse clearly when the database is unreachable."""
        try:  # one connection first: an unreachable server is reported at once, with its reason
            async with await psycopg.AsyncConnection.connect(self._url, connect_timeout=int(self._timeout)) as conn:
                await conn.execute(_SCHEMA + POSTGRES_VERSION_TABLE)
                await upgrade_postgres(conn)
            await self._pool.open(wait=True, timeout=self._timeout)
        except (psycopg.Error, OSError) as exc:
            await self._pool.close()
            raise StoreRefusedError(f"Cannot use the PostgreSQL ledger database: {exc}") from None

    async def _run(self, op: Callable[[_Conn], Awaitable[_T]], *, one_statement: bool = False) -> _T:
        """One transaction on a pooled connection, finished even if the caller is cancelled meanwhile.
        `one_statement`: the op is a single statement, its own transaction (one round trip, no BEGIN)."""
        with anyio.CancelScope(shield=True):
            busy_until = anyio.current_time() + self._timeout
            while True:
                try:
                    async with self._pool.connection() as conn:
                        if one_statement:
                            result = await op(conn)
                        else:
                            async with conn.transaction():  # commits at the end, rolls back on an error
                                result = await op(conn)
                    self.down = False
                    return result
                except PoolTimeout:  # no connection within `wait`: busy (wait on) or down (refuse now)
                    if not self.down and anyio.current_time() < busy_until:
                        continue
                    log.warning("the PostgreSQL ledger is unreachable (no connection within %g s)", self._wait)
                    raise LedgerUnavailableError("the ledger database is unreachable just now") from None
                except psycopg.OperationalError as exc:  # restarting, connection lost: an outage
                    self.down = True
                    log.warning("the PostgreSQL ledger is unreachable: %s", str(exc).strip().splitlines()[:1])
                    raise LedgerUnavailableError("the ledger database is unreachable just now") from None
                except psycopg.Error as exc:
                    log.error("the PostgreSQL ledger refused an operation: %s", exc)
                    raise LedgerUnavailableError("the ledger database refused the operation") from None
        raise AssertionError("unreachable: the loop returns or raises")

    async def ensure_principal(
        self, principal: str, budget: int, *, policy: Policy | None = None, now: float | None = None
    ) -> tuple[Totals, bool]:
        chosen, now = policy or Policy(), time.time() if now is None else now

        async def op(c: _Conn) -> tuple[Totals, bool]:
            cur = await c.execute(
                f"INSERT INTO apikey_principals (name, budget, period_start, {_POLICY})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (principal, budget, period_start(chosen.period, now), *chosen.row()),
            )
            if cur.rowcount == 1:
                await c.execute(_LOG, (time.time(), "budget", CONFIGURATION, None, budget, None, None, principal))
                if chosen != Policy():
                    await c.execute(
                        _LOG, (time.time(), "policy", CONFIGURATION, None, None, chosen.describe(), None, principal)
                    )
            return await _totals(c, principal), cur.rowcount == 1

        return await self._run(op)

    async def _roll(self, c: _Conn, principal: str, now: float) -> float | None:
        """Begin the period `now` is in if it is past the principal's (row locked); the current period's start,
        or None for an unknown principal."""
        row = await (
            await c.execute(
                "SELECT period, period_start, spent FROM apikey_principals WHERE name = %s FOR UPDATE", (principal,)
            )
        ).fetchone()
        if row is None:
            return None
        period, stored, spent = row
        if (start := rolled(period, stored, now)) is None:
            return float(stored)
        await c.execute("UPDATE apikey_principals SET period_start = %s, spent = 0 WHERE name = %s", (start, principal))
        await c.execute(
            _LOG,
            (
                time.time(),
                "period",
                CONFIGURATION,
                None,
                spent,
                f"{label(period, stored)} ended with {spent} spent",
                None,
                principal,
            ),
        )
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
        r = new_reservation(principal, credits, purpose, own_key, hold)
        now = time.time() if now is None else now
        params = {
            "c": credits,
            "p": principal,
            "id": r.id,
            "purpose": purpose,
            "own": own_key,
            "t": r.created_at,
            "actor": principal_actor(principal),
            "modality": r.modality,
            "model": r.model,
            "gateway": r.gateway,
            **{kind: period_start(kind, now) for kind in ("day", "week", "month")},
        }

        async def held(c: _Conn) -> bool:
            row = await (await c.execute(_RESERVE, params)).fetchone()
            if row is not None:
                r.period_start = row[0]
            return row is not None

        async def renew_then_hold(c: _Conn) -> bool:  # the period is due to renew (or the hold does not fit)
            return await self._roll(c, principal, now) is not None and await held(c)

        if not await self._run(held, one_statement=True) and not await self._run(renew_then_hold):
            totals = await self.totals(principal, now=now)
            refused = BudgetExceededError(credits, max(totals.remaining, 0), totals.budget, purpose)

            async def record(c: _Conn) -> None:
                await c.execute(
                    _LOG,
                    (
                        time.time(),
                        "refuse",
                        principal_actor(principal),
                        None,
                        credits,
                        refusal_detail(refused),
                        r.model,
                        principal,
                    ),
                )

            await self._run(record, one_statement=True)
            raise refused
        return r

    async def attach(self, reservation_id: str, task_id: str, modality: str | None = None) -> bool:
        async def op(c: _Conn) -> bool:
            cur = await c.execute(
                "UPDATE apikey_reservations SET task_id = %s, modality = coalesce(%s, modality)"
                " WHERE id = %s AND state = 'reserved' RETURNING principal",
                (task_id, modality, reservation_id),
            )
            row = await cur.fetchone()
            if row is not None:
                await c.execute(
                    _LOG, (time.time(), "attach", principal_actor(row[0]), reservation_id, None, task_id, None, row[0])
                )
            return row is not None

        return await self._run(op)

    async def _close(
        self, reservation_id: str, state: ReservationState, charged: int, actor: str | None, detail: str | None = None
    ) -> bool:
        async def op(c: _Conn) -> bool:
            kind = "settle" if state == ReservationState.SETTLED else "release"
            cur = await c.execute(
                _CLOSE,
                {"s": str(state), "ch": charged, "t": time.time(), "id": reservation_id, "kind": kind, "actor": actor},
            )
            seqs = [row[0] for row in await cur.fetchall()]
            if seqs and detail:
                await c.execute(_WHY, {"why": detail, "seqs": seqs})
            return bool(seqs)

        return await self._run(op, one_statement=not detail)

    async def settle(
        self, reservation_id: str, charged: int, *, actor: str | None = None, detail: str | None = None
    ) -> bool:
        check_charge(charged)
        return await self._close(reservation_id, ReservationState.SETTLED, charged, actor, detail)

    async def release(self, reservation_id: str, *, actor: str | None = None) -> bool:
        return await self._close(reservation_id, ReservationState.RELEASED, 0, actor)

    async def totals(self, principal: str, *, now: float | None = None) -> Totals:
        return await self._run(lambda c: _totals(c, principal, time.time() if now is None else now), one_statement=True)

    async def policy(self, principal: str) -> Policy:
        rows = await self._rows(f"SELECT {_POLICY} FROM apikey_principals WHERE name = %s", (principal,))
        if not rows:
            raise UnknownPrincipalError(f"no principal '{principal}'")
        return Policy.of(*rows[0])

    async def set_policy(self, principal: str, policy: Policy, actor: str, *, now: float | None = None) -> Policy:
        now = time.time() if now is None else now

        async def op(c: _Conn) -> Policy:
            if (current := await self._roll(c, principal, now)) is None:
                raise UnknownPrincipalError(f"no principal '{principal}'")
            old = (
                await (await c.execute("SELECT period FROM apikey_principals WHERE name = %s", (principal,))).fetchone()
            )[0]  # type: ignore[index]
            if policy.period != old:  # the new kind of period starts now, keeping what was spent and held in it
                start = period_start(policy.period, now)
                await c.execute(
                    "UPDATE apikey_reservations SET period_start = %s WHERE principal = %s"
                    " AND state = 'reserved' AND period_start = %s",
                    (start, principal, current),
                )
                await c.execute("UPDATE apikey_principals SET period_start = %s WHERE name = %s", (start, principal))
            await c.execute(
                "UPDATE apikey_principals SET max_per_call = %s, allow = %s, period = %s, alert_at = %s"
                " WHERE name = %s",
                (*policy.row(), principal),
            )
            await c.execute(_LOG, (time.time(), "policy", actor, None, None, policy.describe(), None, principal))
            return policy

        return await self._run(op)

    async def policies(self) -> dict[str, Policy]:
        rows = await self._rows(f"SELECT name, {_POLICY} FROM apikey_principals ORDER BY name")
        return {name: Policy.of(*rest) for name, *rest in rows}

    async def claim_alert(self, principal: str, threshold: int, period_start: float) -> bool:
        async def op(c: _Conn) -> bool:
            cur = await c.execute(
                "INSERT INTO apikey_alerts VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING threshold",
                (principal, period_start, threshold, time.time()),
            )
            made = await cur.fetchone() is not None
            if made:
                await c.execute(
                    _LOG, (time.time(), "alert", CONFIGURATION, None, None, f"{threshold}%", None, principal)
                )
            return made

        return await self._run(op)

    async def set_budget(self, principal: str, credits: int, actor: str) -> Totals:
        check_credits(credits, "a budget")

        async def op(c: _Conn) -> Totals:
            await c.execute(
                "INSERT INTO apikey_principals (name, budget) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET budget = EXCLUDED.budget",
                (principal, credits),
            )
            await c.execute(_LOG, (time.time(), "budget", actor, None, credits, None, None, principal))
            return await _totals(c, principal, time.time())

        return await self._run(op)

    async def _rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        async def op(c: _Conn) -> list[tuple[Any, ...]]:
            return await (await c.execute(sql, params)).fetchall()

        return await self._run(op, one_statement=True)

    async def principals(self) -> list[tuple[str, Totals]]:
        rows = await self._rows(
            "SELECT name, budget, spent, reserved, period, period_start FROM apikey_principals ORDER BY name"
        )
        now = time.time()  # spent in the period current now (none yet in one begun since the last change)
        return [(name, totals_of(name, tuple(rest), now)) for name, *rest in rows]

    async def reservation(self, reservation_id: str) -> Reservation | None:
        rows = await self._rows(f"SELECT {_COLUMNS} FROM apikey_reservations WHERE id = %s", (reservation_id,))
        return _reservation(rows[0]) if rows else None

    async def task_reservation(self, principal: str, task_id: str) -> Reservation | None:
        rows = await self._rows(
            f"SELECT {_COLUMNS} FROM apikey_reservations WHERE task_id = %s AND principal = %s"
            " ORDER BY created_at DESC LIMIT 1",
            (task_id, principal),
        )
        return _reservation(rows[0]) if rows else None

    async def mark_lost(self, reservation_id: str) -> bool:
        async def op(c: _Conn) -> bool:
            now = time.time()
            cur = await c.execute(
                "UPDATE apikey_reservations SET lost_at = %s WHERE id = %s AND state = 'reserved' AND lost_at IS NULL"
                " RETURNING principal, task_id, model",
                (now, reservation_id),
            )
            row = await cur.fetchone()
            if row is not None:
                await c.execute(
                    _LOG, (now, "lost", principal_actor(row[0]), reservation_id, None, row[1], row[2], row[0])
                )
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
        where = ["TRUE"] + ["principal = %s"] * (principal is not None) + ["state = 'reserved'"] * open_only
        where += ["state = 'reserved' AND lost_at IS NOT NULL"] * lost_only
        sql = (
            f"SELECT {_COLUMNS} FROM apikey_reservations WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC LIMIT %s OFFSET %s"
        )
        rows = await self._rows(sql, [*([principal] if principal is not None else []), limit, offset])
        return [_reservation(r) for r in rows]

    async def history(self, principal: str | None = None, *, limit: int = 1000, offset: int = 0) -> list[Event]:
        where, params = ("WHERE principal = %s", [principal]) if principal is not None else ("", [])
        rows = await self._rows(
            "SELECT seq, at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail, model"
            f" FROM apikey_events {where} ORDER BY seq LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
        return [event_of(row) for row in rows]

    async def report(self, since: float, by: str) -> list[ReportRow]:
        rows = await self._rows(
            f"SELECT {_REPORT_KEYS[by]} AS k, coalesce(sum(credits) FILTER (WHERE kind = 'settle'), 0),"
            " count(*) FILTER (WHERE kind = 'reserve'), count(*) FILTER (WHERE kind = 'refuse') FROM apikey_events"
            " WHERE at >= %s AND kind IN ('reserve', 'settle', 'refuse') GROUP BY k ORDER BY k",
            (since,),
        )
        return [ReportRow(str(k), int(sp), int(ca), int(rf)) for k, sp, ca, rf in rows]

    async def first_sighting(self, signature: str, *, keep_seconds: float) -> bool:
        async def op(c: _Conn) -> bool:
            now = time.time()
            await c.execute("DELETE FROM apikey_callbacks WHERE received_at < %s", (now - keep_seconds,))
            cur = await c.execute(
                "INSERT INTO apikey_callbacks VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING signature",
                (signature, now),
            )
            return await cur.fetchone() is not None

        return await self._run(op)

    async def aclose(self) -> None:
        await self._pool.close()


class _Pool(AsyncConnectionPool[Any]):
    """The store's pool, which tells it when reconnecting failed (the database is down, not busy)."""

    def __init__(self, store: PostgresLedgerStore, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._store = store

    async def reconnect_failed(self) -> None:
        self._store.down = True


async def _totals(c: _Conn, principal: str, now: float | None = None) -> Totals:
    """The principal's totals; with `now`, spent in the period current then (0 in one begun since)."""
    row = await (
        await c.execute(
            "SELECT budget, spent, reserved, period, period_start FROM apikey_principals WHERE name = %s", (principal,)
        )
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
