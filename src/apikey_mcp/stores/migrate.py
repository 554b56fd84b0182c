"""Bring a state file written by apikey-mcp 0.1 (the journal behind the in-process ledger) into the ledger.

Budgets, spend, open reservations and their task ids carry over whole, in one transaction: a file is
either migrated or left as it was. Running totals are computed once here from the open reservations.
"""

from __future__ import annotations

import sqlite3
import time

V1_TABLES = {"principals", "reservations", "tasks", "callbacks"}


def is_v1(conn: sqlite3.Connection, tables: set[str]) -> bool:
    if tables != V1_TABLES:
        return False
    columns = {row[1] for row in conn.execute("PRAGMA table_info(principals)")}
    return columns == {"name", "budget", "spent"}


def migrate_v1(conn: sqlite3.Connection, schema: str, application_id: int, version: int) -> None:
    conn.executescript(f"""
BEGIN IMMEDIATE;
ALTER TABLE principals RENAME TO v1_principals;
ALTER TABLE reservations RENAME TO v1_reservations;
ALTER TABLE callbacks RENAME TO v1_callbacks;
{schema}
INSERT INTO principals (name, budget, spent, reserved)
    SELECT p.name, max(p.budget, 0), p.spent, (SELECT coalesce(sum(r.credits), 0) FROM v1_reservations r
                                               WHERE r.principal = p.name AND r.state = 'reserved')
    FROM v1_principals p;
INSERT INTO reservations (id, principal, credits, purpose, task_id, modality, own_key, state, charged, created_at,
                          closed_at)
    SELECT r.id, r.principal, r.credits, r.purpose, r.task_id, t.modality, coalesce(t.own_key, 0), r.state,
           r.charged, r.updated_at, CASE WHEN r.state = 'reserved' THEN NULL ELSE r.updated_at END
    FROM v1_reservations r LEFT JOIN tasks t ON t.task_id = r.task_id
    WHERE r.principal IN (SELECT name FROM principals);
INSERT INTO callbacks SELECT signature, received_at FROM v1_callbacks;
INSERT INTO events (at, principal, kind, actor, credits, budget, spent, reserved, detail)
    SELECT {time.time()}, name, 'budget', 'configuration', budget, budget, spent, reserved,
           'migrated from an apikey-mcp 0.1 state file'
    FROM principals;
DROP TABLE v1_principals;
DROP TABLE v1_reservations;
DROP TABLE v1_callbacks;
DROP TABLE tasks;
PRAGMA application_id = {application_id};
PRAGMA user_version = {version};
COMMIT;
""")
