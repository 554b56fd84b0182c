"""The PostgreSQL ledger store, for operators who run several server processes or machines.

A reservation is one conditional UPDATE that adds to `reserved` only where `spent + reserved + credits
<= budget`: PostgreSQL re-checks the condition on the row it locked, so no number of concurrent
processes can overspend. Settle and release update the reservation only while it is still open and move
its credits on the principal's row in the same statement, so each happens exactly once. psycopg 3 async,
with its connection pool (postgres_pool.py); tables are prefixed `apikey_` so the database may be shared.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

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
    StoreRefusedError,
    check_charge,
    check_credits,
    event_of,
    new_reservation,
    principal_actor,
    refusal_detail,
    totals_of,
)
from .postgres_pool import OUTAGE_SECONDS, Connection, PostgresPool
from .postgres_statements import ADD_PRINCIPAL, CLAIM_ALERT, CLOSE, CLOSE_REASON, REPORT_KEYS, RESERVE, SIGHT_SIGNATURE
from .statements import POSTGRES as SQL
from .statements import reservation_of
from .upgrades import POSTGRES_BASE, POSTGRES_VERSION_TABLE, upgrade_postgres

_T = TypeVar("_T")


class PostgresLedgerStore:
    """The ledger on a PostgreSQL database that several processes share; also the transactions replica
    coordination (fleet.py) runs beside it."""

    def __init__(self, url: str, *, max_size: int = 10, timeout: float = 15.0, wait: float = OUTAGE_SECONDS) -> None:
        """Built closed: `open()` connects (in the server's lifespan, or `connect()`). `timeout` bounds the
        first connection and the wait for a busy database; `wait`, the wait for an unreachable one (an outage)."""
        self._url, self._timeout = url, timeout
        self.pool = PostgresPool(url, max_size=max_size, timeout=timeout, wait=wait)

    @classmethod
    async def connect(cls, url: str, **options: Any) -> PostgresLedgerStore:
        store = cls(url, **options)
        await store.open()
        return store

    async def open(self) -> None:
        """Connect and create the tables if they are missing; refuse clearly when the database is unreachable."""
        try:  # one connection first: an unreachable server is reported at once, with its reason
            async with await psycopg.AsyncConnection.connect(self._url, connect_timeout=int(self._timeout)) as conn:
                await conn.execute(POSTGRES_BASE + POSTGRES_VERSION_TABLE)
                await upgrade_postgres(conn)
            await self.pool.open()
        except (psycopg.Error, OSError) as exc:
            await self.pool.close()
            raise StoreRefusedError(f"Cannot use the PostgreSQL ledger database: {exc}") from None

    async def transaction(self, op: Callable[[Connection], Awaitable[_T]], *, one_statement: bool = False) -> _T:
        """Run `op` in one transaction (see `PostgresPool.transaction`): for replica coordination, whose tables
        live beside the ledger's and whose changes commit with it."""
        return await self.pool.transaction(op, one_statement=one_statement)

    async def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows of one statement, run as its own transaction."""
        return await self.pool.rows(sql, params)

    async def ensure_principal(
        self, principal: str, budget: int, *, policy: Policy | None = None, now: float | None = None
    ) -> tuple[Totals, bool]:
        chosen, now = policy or Policy(), time.time() if now is None else now

        async def op(c: Connection) -> tuple[Totals, bool]:
            cur = await c.execute(
                ADD_PRINCIPAL,
                (principal, budget, period_start(chosen.period, now), *chosen.row()),
            )
            if cur.rowcount == 1:
                await _log(c, principal, "budget", CONFIGURATION, None, budget)
                if chosen != Policy():
                    await _log(c, principal, "policy", CONFIGURATION, None, None, chosen.describe())
            return await _totals(c, principal), cur.rowcount == 1

        return await self.transaction(op)

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

        async def held(c: Connection) -> bool:
            row = await (await c.execute(RESERVE, params)).fetchone()
            if row is not None:
                r.period_start = row[0]
            return row is not None

        async def renew_then_hold(c: Connection) -> bool:  # the period is due to renew (or the hold does not fit)
            return await _roll(c, principal, now) is not None and await held(c)

        if not await self.transaction(held, one_statement=True) and not await self.transaction(renew_then_hold):
            totals = await self.totals(principal, now=now)
            refused = BudgetExceededError(credits, max(totals.remaining, 0), totals.budget, purpose)
            why = refusal_detail(refused)
            await self.transaction(
                lambda c: _log(c, principal, "refuse", principal_actor(principal), None, credits, why, r.model),
                one_statement=True,
            )
            raise refused
        return r

    async def attach(self, reservation_id: str, task_id: str, modality: str | None = None) -> bool:
        async def op(c: Connection) -> bool:
            row = await (await c.execute(SQL.attach, (task_id, modality, reservation_id))).fetchone()
            if row is not None:
                await _log(c, row[0], "attach", principal_actor(row[0]), reservation_id, None, task_id)
            return row is not None

        return await self.transaction(op)

    async def close_in(
        self,
        c: Connection,
        reservation_id: str,
        state: ReservationState,
        charged: int,
        *,
        at: float,
        actor: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """Settle or release an open reservation inside the caller's transaction, with its audit lines (`detail`:
        the operator's reason); False if it was already closed, so it happens exactly once."""
        kind = "settle" if state == ReservationState.SETTLED else "release"
        cur = await c.execute(
            CLOSE, {"s": str(state), "ch": charged, "t": at, "id": reservation_id, "kind": kind, "actor": actor}
        )
        seqs = [row[0] for row in await cur.fetchall()]
        if seqs and detail:
            await c.execute(CLOSE_REASON, {"why": detail, "seqs": seqs})
        return bool(seqs)

    async def _close(
        self, reservation_id: str, state: ReservationState, charged: int, actor: str | None, detail: str | None = None
    ) -> bool:
        return await self.transaction(
            lambda c: self.close_in(c, reservation_id, state, charged, at=time.time(), actor=actor, detail=detail),
            one_statement=not detail,
        )

    async def settle(
        self, reservation_id: str, charged: int, *, actor: str | None = None, detail: str | None = None
    ) -> bool:
        check_charge(charged)
        return await self._close(reservation_id, ReservationState.SETTLED, charged, actor, detail)

    async def release(self, reservation_id: str, *, actor: str | None = None) -> bool:
        return await self._close(reservation_id, ReservationState.RELEASED, 0, actor)

    async def totals(self, principal: str, *, now: float | None = None) -> Totals:
        at = time.time() if now is None else now
        return await self.transaction(lambda c: _totals(c, principal, at), one_statement=True)

    async def policy(self, principal: str) -> Policy:
        rows = await self.rows(SQL.policy, (principal,))
        if not rows:
            raise UnknownPrincipalError(f"no principal '{principal}'")
        return Policy.of(*rows[0])

    async def set_policy(self, principal: str, policy: Policy, actor: str, *, now: float | None = None) -> Policy:
        now = time.time() if now is None else now

        async def op(c: Connection) -> Policy:
            if (current := await _roll(c, principal, now)) is None:
                raise UnknownPrincipalError(f"no principal '{principal}'")
            old = (await (await c.execute(SQL.kind_of_period, (principal,))).fetchone())[0]  # type: ignore[index]
            if policy.period != old:  # the new kind of period starts now, keeping what was spent and held in it
                start = period_start(policy.period, now)
                await c.execute(SQL.move_open_holds, (start, principal, current))
                await c.execute(SQL.move_period, (start, principal))
            await c.execute(SQL.set_policy, (*policy.row(), principal))
            await _log(c, principal, "policy", actor, None, None, policy.describe())
            return policy

        return await self.transaction(op)

    async def policies(self) -> dict[str, Policy]:
        return {name: Policy.of(*rest) for name, *rest in await self.rows(SQL.policies)}

    async def claim_alert(self, principal: str, threshold: int, period_start: float) -> bool:
        async def op(c: Connection) -> bool:
            cur = await c.execute(
                CLAIM_ALERT,
                (principal, period_start, threshold, time.time()),
            )
            made = await cur.fetchone() is not None
            if made:
                await _log(c, principal, "alert", CONFIGURATION, None, None, f"{threshold}%")
            return made

        return await self.transaction(op)

    async def set_budget(self, principal: str, credits: int, actor: str) -> Totals:
        check_credits(credits, "a budget")

        async def op(c: Connection) -> Totals:
            await c.execute(SQL.set_budget, (principal, credits))
            await _log(c, principal, "budget", actor, None, credits)
            return await _totals(c, principal, time.time())

        return await self.transaction(op)

    async def principals(self) -> list[tuple[str, Totals]]:
        rows = await self.rows(SQL.all_totals)
        now = time.time()  # spent in the period current now (none yet in one begun since the last change)
        return [(name, totals_of(name, tuple(rest), now)) for name, *rest in rows]

    async def reservation(self, reservation_id: str) -> Reservation | None:
        rows = await self.rows(SQL.reservation, (reservation_id,))
        return reservation_of(rows[0]) if rows else None

    async def task_reservation(self, principal: str, task_id: str) -> Reservation | None:
        rows = await self.rows(SQL.task_reservation, (task_id, principal))
        return reservation_of(rows[0]) if rows else None

    async def mark_lost(self, reservation_id: str) -> bool:
        async def op(c: Connection) -> bool:
            now = time.time()
            row = await (await c.execute(SQL.mark_lost, (now, reservation_id))).fetchone()
            if row is not None:
                await _log(c, row[0], "lost", principal_actor(row[0]), reservation_id, None, row[1], row[2], at=now)
            return row is not None

        return await self.transaction(op)

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
        return [reservation_of(r) for r in await self.rows(*page)]

    async def history(self, principal: str | None = None, *, limit: int = 1000, offset: int = 0) -> list[Event]:
        return [event_of(row) for row in await self.rows(*SQL.events_of(principal, limit=limit, offset=offset))]

    async def report(self, since: float, by: str) -> list[ReportRow]:
        rows = await self.rows(SQL.report_by(REPORT_KEYS[by]), (since,))
        return [ReportRow(str(k), int(sp), int(ca), int(rf)) for k, sp, ca, rf in rows]

    async def first_sighting_in(self, c: Connection, signature: str, *, keep_seconds: float, at: float) -> bool:
        """Remember a callback signature inside the caller's transaction; False if seen within `keep_seconds`."""
        await c.execute(SQL.forget_signatures, (at - keep_seconds,))
        cur = await c.execute(SIGHT_SIGNATURE, (signature, at))
        return await cur.fetchone() is not None

    async def first_sighting(self, signature: str, *, keep_seconds: float) -> bool:
        return await self.transaction(
            lambda c: self.first_sighting_in(c, signature, keep_seconds=keep_seconds, at=time.time())
        )

    async def aclose(self) -> None:
        await self.pool.close()


async def _log(
    c: Connection,
    principal: str,
    kind: str,
    actor: str,
    rid: str | None,
    credits: int | None,
    detail: str | None = None,
    model: str | None = None,
    *,
    at: float | None = None,
) -> None:
    """Add an audit line with the principal's totals after the change (`at`: now unless given)."""
    at = time.time() if at is None else at
    await c.execute(SQL.log_event, (at, kind, actor, rid, credits, detail, model, principal))


async def _roll(c: Connection, principal: str, now: float) -> float | None:
    """Begin the period `now` is in if it is past the principal's (row locked); the current period's start,
    or None for an unknown principal."""
    row = await (await c.execute(SQL.period_of + " FOR UPDATE", (principal,))).fetchone()
    if row is None:
        return None
    period, stored, spent = row
    if (start := rolled(period, stored, now)) is None:
        return float(stored)
    await c.execute(SQL.renew_period, (start, principal))
    await _log(c, principal, "period", CONFIGURATION, None, spent, f"{label(period, stored)} ended with {spent} spent")
    return start


async def _totals(c: Connection, principal: str, now: float | None = None) -> Totals:
    """The principal's totals; with `now`, spent in the period current then (0 in one begun since)."""
    return totals_of(principal, await (await c.execute(SQL.totals, (principal,))).fetchone(), now)
