"""The PostgreSQL store's connections: a psycopg pool that lives through database restarts, and the rule that
turns an outage or a refusal into `LedgerUnavailableError` (money fails closed: nothing was changed).

A pooled connection is checked before use (a dead one, left by a restart or pg_terminate_backend, is
replaced), and a failed reconnection gives up after `wait` so the next operation tries afresh instead of
waiting for the pool's growing backoff. A database that is up but busy is waited for up to `timeout`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..budget import LedgerUnavailableError

log = logging.getLogger(__name__)
_T = TypeVar("_T")
OUTAGE_SECONDS = 1.0  # an operation waits this long for a working connection, then the ledger is unavailable
Connection = psycopg.AsyncConnection[Any]


class PostgresPool:
    """Transactions on pooled connections, each finished even if its caller is cancelled meanwhile."""

    def __init__(self, url: str, *, max_size: int, timeout: float, wait: float) -> None:
        """Built closed: `open()` connects. `timeout` bounds the first connection, and how long an operation
        waits its turn while the database is up but busy; `wait`, how long it waits while it is unreachable."""
        self.url, self.timeout, self.wait = url, timeout, wait
        self.down = False  # a connection failed (check, connect or use) and none has worked since
        self._pool = _ReportingPool(
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

    async def _check(self, conn: Connection) -> None:
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            self.down = True
            raise

    async def _connected(self, conn: Connection) -> None:
        self.down = False

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=self.timeout)

    async def close(self) -> None:
        await self._pool.close()

    async def transaction(self, op: Callable[[Connection], Awaitable[_T]], *, one_statement: bool = False) -> _T:
        """Run `op` in one transaction on a pooled connection; `one_statement`: the op is a single statement,
        its own transaction (one round trip, no BEGIN). LedgerUnavailableError when the database is down or
        refuses the operation."""
        with anyio.CancelScope(shield=True):
            busy_until = anyio.current_time() + self.timeout
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
                    log.warning("the PostgreSQL ledger is unreachable (no connection within %g s)", self.wait)
                    raise LedgerUnavailableError("the ledger database is unreachable just now") from None
                except psycopg.OperationalError as exc:  # restarting, connection lost: an outage
                    self.down = True
                    log.warning("the PostgreSQL ledger is unreachable: %s", str(exc).strip().splitlines()[:1])
                    raise LedgerUnavailableError("the ledger database is unreachable just now") from None
                except psycopg.Error as exc:
                    log.error("the PostgreSQL ledger refused an operation: %s", exc)
                    raise LedgerUnavailableError("the ledger database refused the operation") from None
        raise AssertionError("unreachable: the loop returns or raises")

    async def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows of one statement, run as its own transaction."""

        async def op(c: Connection) -> list[tuple[Any, ...]]:
            return await (await c.execute(sql, params)).fetchall()

        return await self.transaction(op, one_statement=True)


class _ReportingPool(AsyncConnectionPool[Any]):
    """A pool that tells its owner when reconnecting failed (the database is down, not busy)."""

    def __init__(self, owner: PostgresPool, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    async def reconnect_failed(self) -> None:
        self._owner.down = True
