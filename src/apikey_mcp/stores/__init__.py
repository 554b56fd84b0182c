"""Ledger stores, one per deployment: memory (a server built in process), SQLite (stdio, and hosted on one
machine), PostgreSQL (many).

`store_for` picks one from the settings (the PostgreSQL driver is imported only when asked for) and opens
what can be opened at once: a state file that is empty or not ours is refused here, before serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from ..budget import LedgerStore
from .common import StoreRefusedError
from .memory import MemoryLedgerStore

__all__ = ["LedgerStore", "MemoryLedgerStore", "StoreRefusedError", "describe", "open_store", "store_for"]


def store_for(*, database_url: str | None = None, state_file: Path | None = None) -> LedgerStore:
    """The PostgreSQL store for a database URL (to be `open()`ed), else SQLite for a state file, else memory."""
    if database_url:
        try:
            from .postgres import PostgresLedgerStore
        except ImportError:
            raise StoreRefusedError("--database-url needs psycopg: pip install 'apikey-mcp[postgres]'") from None
        return PostgresLedgerStore(database_url)
    if state_file is not None:
        from .sqlite import SqliteLedgerStore

        return SqliteLedgerStore(state_file)
    return MemoryLedgerStore()


async def ready(store: LedgerStore) -> None:
    """Finish opening a store that connects asynchronously (PostgreSQL)."""
    if (opener := getattr(store, "open", None)) is not None:
        await opener()


@asynccontextmanager
async def open_store(*, database_url: str | None = None, state_file: Path | None = None) -> AsyncIterator[LedgerStore]:
    import anyio

    store = await anyio.to_thread.run_sync(lambda: store_for(database_url=database_url, state_file=state_file))
    try:
        await ready(store)
        yield store
    finally:
        await store.aclose()


def describe(*, database_url: str | None = None, state_file: Path | None = None) -> str:
    """Where the ledger lives, for logs and messages (a database URL without its user or password)."""
    if database_url:
        parts = urlsplit(database_url)
        return f"PostgreSQL {parts.hostname or 'local socket'}{f':{parts.port}' if parts.port else ''}{parts.path}"
    return f"SQLite {state_file}" if state_file is not None else "memory"
