"""Opening a SQLite ledger file: one that is empty, not SQLite, or another program's is refused, never reset;
a version-1 ledger is migrated; a new file gets the base schema; every file gets the upgrades it lacks.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .common import StoreRefusedError
from .migrate import is_v1, migrate_v1
from .upgrades import BASE_VERSION, SQLITE_BASE, upgrade_sqlite

APPLICATION_ID = 0x41504B4D  # 'APKM': marks the file as ours
SCHEMA_VERSION = BASE_VERSION  # the base schema; later changes are steps in upgrades.py


def open_ledger_file(path: Path, busy_seconds: float) -> sqlite3.Connection:
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
            migrate_v1(conn, SQLITE_BASE, APPLICATION_ID, SCHEMA_VERSION)
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
                f"BEGIN IMMEDIATE; {SQLITE_BASE} PRAGMA application_id = {APPLICATION_ID};"
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
