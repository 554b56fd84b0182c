"""The ledger's tables for SQLite and PostgreSQL: the base schema (version 2) and every later change as a step.

The base schema stays as it was written; every later change is a numbered step here, applied in order to
new and old ledgers in the same transaction that records the new version. Each feature adds its own step
with the next free number, so steps from different branches merge as separate dictionary entries.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .whole_credits import POSTGRES_WHOLE_CREDITS, SQLITE_WHOLE_CREDITS

BASE_VERSION = 2

SQLITE_BASE = """
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

# Created under an advisory lock, so that replicas starting together do not race to create the same tables.
POSTGRES_BASE = """
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

# version -> SQL run once when a SQLite ledger is below it (several statements allowed).
SQLITE_STEPS: dict[int, str] = {
    # 3: a task the gateway stopped knowing is marked lost, its hold kept for the operator (issue 16).
    3: "ALTER TABLE reservations ADD COLUMN lost_at REAL",
    # 4: credits are whole numbers of at most 64 bits; bad rows are repaired (whole_credits.py, issue 16).
    4: SQLITE_WHOLE_CREDITS,
    # 5: reservations record their model and the gateway they were made at; events carry the model, and
    # refusals are events too (kind 'refuse'), so that `admin report` totals by principal, model and day.
    5: """
    ALTER TABLE reservations ADD COLUMN model TEXT;
    ALTER TABLE reservations ADD COLUMN gateway TEXT;
    ALTER TABLE events ADD COLUMN model TEXT;
    CREATE INDEX IF NOT EXISTS events_by_time ON events (at)
    """,
}

# version -> SQL run once when a PostgreSQL ledger is below it, under the schema's advisory lock.
POSTGRES_STEPS: dict[int, str] = {
    3: "ALTER TABLE apikey_reservations ADD COLUMN IF NOT EXISTS lost_at DOUBLE PRECISION",
    4: POSTGRES_WHOLE_CREDITS,
    5: """
    ALTER TABLE apikey_reservations ADD COLUMN IF NOT EXISTS model TEXT;
    ALTER TABLE apikey_reservations ADD COLUMN IF NOT EXISTS gateway TEXT;
    ALTER TABLE apikey_events ADD COLUMN IF NOT EXISTS model TEXT;
    CREATE INDEX IF NOT EXISTS apikey_events_by_time ON apikey_events (at)
    """,
}

# 6: spending policy per principal (policy.py), budget periods (periods.py) and alerts sent once per period.
SQLITE_STEPS[6] = """
ALTER TABLE principals ADD COLUMN max_per_call INTEGER;
ALTER TABLE principals ADD COLUMN allow TEXT;
ALTER TABLE principals ADD COLUMN period TEXT NOT NULL DEFAULT 'none';
ALTER TABLE principals ADD COLUMN period_start REAL NOT NULL DEFAULT 0;
ALTER TABLE principals ADD COLUMN alert_at INTEGER;
ALTER TABLE reservations ADD COLUMN period_start REAL NOT NULL DEFAULT 0;
CREATE TABLE alerts (
    principal TEXT NOT NULL, period_start REAL NOT NULL, threshold INTEGER NOT NULL, sent_at REAL NOT NULL,
    PRIMARY KEY (principal, period_start, threshold))
"""
POSTGRES_STEPS[6] = """
ALTER TABLE apikey_principals ADD COLUMN IF NOT EXISTS max_per_call BIGINT;
ALTER TABLE apikey_principals ADD COLUMN IF NOT EXISTS allow TEXT;
ALTER TABLE apikey_principals ADD COLUMN IF NOT EXISTS period TEXT NOT NULL DEFAULT 'none';
ALTER TABLE apikey_principals ADD COLUMN IF NOT EXISTS period_start DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE apikey_principals ADD COLUMN IF NOT EXISTS alert_at INTEGER;
ALTER TABLE apikey_reservations ADD COLUMN IF NOT EXISTS period_start DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS apikey_alerts (
    principal TEXT NOT NULL, period_start DOUBLE PRECISION NOT NULL, threshold INTEGER NOT NULL,
    sent_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (principal, period_start, threshold))
"""

LATEST = max([BASE_VERSION, *SQLITE_STEPS, *POSTGRES_STEPS])


def upgrade_sqlite(conn: sqlite3.Connection) -> None:
    """Bring a SQLite ledger (already ours, at least the base version) up to `LATEST`, one step per transaction."""
    for version in sorted(SQLITE_STEPS):
        if conn.execute("PRAGMA user_version").fetchone()[0] < version:
            conn.executescript(f"BEGIN IMMEDIATE; {SQLITE_STEPS[version]}; PRAGMA user_version = {version}; COMMIT;")


POSTGRES_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS apikey_schema (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version INTEGER NOT NULL);
INSERT INTO apikey_schema (version) VALUES (2) ON CONFLICT DO NOTHING;
"""


async def upgrade_postgres(conn: Any) -> None:
    """Bring a PostgreSQL ledger up to `LATEST`; replicas starting together take the advisory lock in turn."""
    for version in sorted(POSTGRES_STEPS):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(1095781197)")
            row = await (await conn.execute("SELECT version FROM apikey_schema")).fetchone()
            if row[0] < version:
                await conn.execute(POSTGRES_STEPS[version])
                await conn.execute("UPDATE apikey_schema SET version = %s", (version,))
