"""Ledger stores, one per deployment: memory (stdio), SQLite (hosted, one machine), PostgreSQL (many).

`open_store` picks one from the settings; the PostgreSQL driver is imported only when it is asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ..budget import LedgerStore
from .common import StoreRefusedError
from .memory import MemoryLedgerStore

__all__ = ["LedgerStore", "MemoryLedgerStore", "StoreRefusedError", "describe", "open_store"]


@asynccontextmanager
async def open_store(*, database_url: str | None = None, state_file: Path | None = None) -> AsyncIterator[LedgerStore]:
    """The PostgreSQL store for a database URL, else the SQLite store for a state file, else memory."""
    store: LedgerStore
    if database_url:
        from .postgres import PostgresLedgerStore

        store = await PostgresLedgerStore.connect(database_url)
    elif state_file is not None:
        import anyio

        from .sqlite import SqliteLedgerStore

        store = await anyio.to_thread.run_sync(SqliteLedgerStore, state_file)
    else:
        store = MemoryLedgerStore()
    try:
        yield store
    finally:
        await store.aclose()


def describe(*, database_url: str | None = None, state_file: Path | None = None) -> str:
    """Where the ledger lives, for logs (a database URL without its password)."""
    if database_url:
        from urllib.parse import urlsplit

        parts = urlsplit(database_url)
        host = parts.hostname or "local socket"
        return f"PostgreSQL {host}{f':{parts.port}' if parts.port else ''}{parts.path}"
    return f"SQLite {state_file}" if state_file is not None else "memory"
