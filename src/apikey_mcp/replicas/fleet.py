"""What replicas on one PostgreSQL database share beside the ledger: task leases, task states, wake-ups.

- A lease row (`owner`, `lease_until`) says which replica watches a task. It is taken with one conditional
  upsert (free, expired, or already ours), renewed for all of a replica's tasks in one statement, and
  deleted when the task ends; a replica that dies stops renewing, so its leases expire and another takes them.
- The latest state of every task is a row any replica can read (a poll on another replica, a lost wake-up).
- A change is announced with `NOTIFY apikey_tasks, '<task id>'` in the transaction that records it, so it is
  heard only once committed. Each replica LISTENs on one connection of its own, outside the pool.
- A verified callback is de-duplicated, recorded and settled in one transaction (`settle_callback`).

Times are the database's (`clock_timestamp()`), so replicas' clocks need not agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import anyio
import psycopg

from ..budget import LedgerUnavailableError, Reservation, ReservationState
from ..errors import LedgerError
from ..gateway.models import Task, TaskStatus
from ..stores.postgres import PostgresLedgerStore
from ..stores.postgres_pool import Connection
from ..stores.statements import reservation_columns, reservation_of

log = logging.getLogger(__name__)
CHANNEL = "apikey_tasks"
LISTENER_NAME = "apikey-mcp fleet listener"  # its application_name, to tell it apart in pg_stat_activity
Claim = Literal["new", "ours", "taken"]
_SCHEMA = """
SELECT pg_advisory_xact_lock(1095781198);
CREATE TABLE IF NOT EXISTS apikey_task_leases (
    task_id TEXT PRIMARY KEY, owner TEXT NOT NULL, lease_until TIMESTAMPTZ NOT NULL);
CREATE INDEX IF NOT EXISTS apikey_task_leases_owner ON apikey_task_leases (owner);
CREATE TABLE IF NOT EXISTS apikey_task_states (
    task_id TEXT PRIMARY KEY, principal TEXT NOT NULL, body TEXT NOT NULL, terminal BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS apikey_reservations_task ON apikey_reservations (task_id);
"""
_SAVE_STATE = (
    "INSERT INTO apikey_task_states (task_id, principal, body, terminal) VALUES (%(t)s, %(p)s, %(b)s, %(end)s)"
    " ON CONFLICT (task_id) DO UPDATE SET body = EXCLUDED.body, terminal = EXCLUDED.terminal,"
    " updated_at = clock_timestamp() WHERE NOT apikey_task_states.terminal"
)
CallbackOutcome = Literal["replay", "unknown", "recorded"]


@dataclass(frozen=True)
class SharedTask:
    """A task as the fleet knows it: whose it is, its open (or last) reservation, its latest state."""

    principal: str
    task: Task
    reservation: Reservation | None


class Fleet:
    """One replica's view of the fleet's shared tables; `owner` names this replica in lease rows."""

    def __init__(self, store: PostgresLedgerStore, url: str, owner: str, *, lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._url = url
        self.connected = False  # the listener's connection is up (readiness)

    async def open(self) -> None:
        await self.store.transaction(lambda c: c.execute(_SCHEMA))

    # ------------------------------------------------------------ leases

    async def claim(self, task_id: str) -> Claim | None:
        """Take the task's lease if it is free, expired or ours; None while another replica holds it."""

        async def op(c: Connection) -> Claim | None:
            cur = await c.execute(
                "INSERT INTO apikey_task_leases AS l (task_id, owner, lease_until)"
                " VALUES (%(t)s, %(o)s, clock_timestamp() + make_interval(secs => %(s)s))"
                " ON CONFLICT (task_id) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until"
                " WHERE l.owner = EXCLUDED.owner OR l.lease_until < clock_timestamp()"
                " RETURNING (xmax = 0) AS inserted, (SELECT owner FROM apikey_task_leases WHERE task_id = %(t)s)",
                {"t": task_id, "o": self.owner, "s": self.lease_seconds},
            )
            row = await cur.fetchone()
            if row is None:
                return None
            inserted, before = row
            return "new" if inserted else ("ours" if before == self.owner else "taken")

        return await self.store.transaction(op, one_statement=True)

    async def renew(self) -> int:
        """Extend every lease this replica holds; how many it still holds."""

        async def op(c: Connection) -> int:
            cur = await c.execute(
                "UPDATE apikey_task_leases SET lease_until = clock_timestamp() + make_interval(secs => %s)"
                " WHERE owner = %s",
                (self.lease_seconds, self.owner),
            )
            return int(cur.rowcount)

        return await self.store.transaction(op, one_statement=True)

    async def release(self, task_id: str) -> None:
        await self.store.transaction(
            lambda c: c.execute(
                "DELETE FROM apikey_task_leases WHERE task_id = %s AND owner = %s", (task_id, self.owner)
            ),
            one_statement=True,
        )

    async def lease_owner(self, task_id: str) -> str | None:
        rows = await self.store.rows(
            "SELECT owner FROM apikey_task_leases WHERE task_id = %s AND lease_until >= clock_timestamp()", (task_id,)
        )
        return rows[0][0] if rows else None

    async def orphans(self, limit: int = 100, after: tuple[float, str] = (float("-inf"), "")) -> list[Reservation]:
        """Open reservations tied to a task nobody watches (no lease, or an expired one), to be taken over: one
        page, oldest first, after `after` (created_at, id) of the previous page's last. Lost tasks are not
        orphans (the operator closes them), so no number of them fills a page."""
        rows = await self.store.rows(
            f"SELECT {reservation_columns('r')} FROM apikey_reservations r"
            " LEFT JOIN apikey_task_leases l ON l.task_id = r.task_id"
            " WHERE r.state = 'reserved' AND r.task_id IS NOT NULL AND NOT r.own_key AND r.lost_at IS NULL"
            " AND (l.task_id IS NULL OR l.lease_until < clock_timestamp()) AND (r.created_at, r.id) > (%s, %s)"
            " ORDER BY r.created_at, r.id LIMIT %s",
            (*after, limit),
        )
        return [reservation_of(row) for row in rows]

    # ------------------------------------------------------------ task states

    async def publish(self, principal: str, task: Task) -> None:
        """Record the task's latest state and wake every replica (a terminal state is never overwritten)."""

        async def op(c: Connection) -> None:  # one statement, one round trip: the state and its announcement
            await c.execute(
                f"WITH saved AS ({_SAVE_STATE}) SELECT pg_notify(%(ch)s, %(t)s)",
                {**_state(principal, task), "ch": CHANNEL},
            )

        await self.store.transaction(op, one_statement=True)

    async def find(self, task_id: str, principal: str | None = None) -> SharedTask | None:
        """The task's owner, latest state and reservation; with `principal`, only if it is that principal's."""
        rows = await self.store.rows(
            f"SELECT {reservation_columns('r')}, s.principal, s.body"
            " FROM apikey_task_states s"
            " FULL JOIN apikey_reservations r ON r.task_id = s.task_id WHERE coalesce(s.task_id, r.task_id) = %s"
            " ORDER BY r.state = 'reserved' DESC, r.created_at LIMIT 1",
            (task_id,),
        )
        if not rows:
            return None
        *columns, owner, body = rows[0]
        reservation = reservation_of(tuple(columns)) if columns[0] is not None else None
        owner = owner or (reservation.principal if reservation else None)
        if owner is None or (principal is not None and owner != principal):
            return None
        task = Task.model_validate_json(body) if body else Task(task_id=task_id, status=TaskStatus.PENDING)
        return SharedTask(owner, task, reservation)

    # ------------------------------------------------------------ callbacks

    async def settle_callback(
        self, signature: str, keep_seconds: float, task: Task, reservation_id: str | None
    ) -> CallbackOutcome:
        """De-duplicate, record and (when it ended) settle or release, all in one transaction, then announce."""

        async def op(c: Connection) -> CallbackOutcome:
            now = time.time()
            if not await self.store.first_sighting_in(c, signature, keep_seconds=keep_seconds, at=now):
                return "replay"
            cur = await c.execute(
                "SELECT id, principal, task_id, credits FROM apikey_reservations WHERE task_id = %s"
                " OR (id = %s AND task_id IS NULL) ORDER BY state = 'reserved' DESC, created_at LIMIT 1 FOR UPDATE",
                (task.task_id, reservation_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise _Unknown  # rolls the signature back: a later delivery to the right place still counts
            rid, principal, tied, credits = row
            if tied is None:  # a create whose answer was lost: the callback ties its task now
                await c.execute("UPDATE apikey_reservations SET task_id = %s WHERE id = %s", (task.task_id, rid))
            if task.is_terminal:  # settled at the stated charge (the whole hold if none), or released
                ok = task.status == TaskStatus.SUCCEEDED
                stated = task.credits.charged if task.credits and task.credits.charged is not None else None
                charged = (credits if stated is None else stated) if ok else 0
                state = ReservationState.SETTLED if ok else ReservationState.RELEASED
                await self.store.close_in(c, rid, state, charged, at=now)
                if charged > credits:  # recorded in full, with its overcharge event (the statement writes it)
                    log.error(
                        "overcharge: the gateway charged %d credits for task %s, over its hold of %d (reservation %s)",
                        charged,
                        task.task_id,
                        credits,
                        rid,
                    )
            await c.execute(_SAVE_STATE, _state(principal, task))
            await c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, task.task_id))
            return "recorded"

        try:
            return await self.store.transaction(op)
        except _Unknown:
            return "unknown"

    # ------------------------------------------------------------ wake-ups

    async def listen(
        self,
        on_task: Callable[[str], Awaitable[None]],
        on_connect: Callable[[], Awaitable[None]],
        *,
        retry_seconds: float = 1.0,
    ) -> None:
        """Hear every announced task id until cancelled; reconnect after a loss, then call `on_connect` (the
        waiters re-read their rows: notifications sent while disconnected are gone)."""
        while True:
            try:
                async for task_id in self._notifications(on_connect):
                    try:
                        await on_task(task_id)
                    except Exception:
                        log.exception("handling the announcement of task %s failed", task_id)
            except (psycopg.Error, OSError, LedgerUnavailableError) as exc:
                log.warning("lost the fleet's notification connection (%s); reconnecting", type(exc).__name__)
            await anyio.sleep(retry_seconds)

    async def _notifications(self, on_connect: Callable[[], Awaitable[None]]) -> AsyncIterator[str]:
        connect = psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name=LISTENER_NAME, connect_timeout=2
        )
        async with await connect as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.connected = True
            try:
                await on_connect()
                async for notice in conn.notifies():
                    yield notice.payload
            finally:
                self.connected = False


class _Unknown(LedgerError):
    """No reservation for a callback's task: raised inside the transaction to roll its signature back."""


def _state(principal: str, task: Task) -> dict[str, object]:
    return {"t": task.task_id, "p": principal, "b": task.model_dump_json(exclude_none=True), "end": task.is_terminal}
