"""Schema step 4: every number of credits a ledger keeps is a whole number of at most 64 bits.

PostgreSQL's BIGINT columns hold nothing else. SQLite stores what it is given: an integer sum that passes
2^63-1 becomes a float (9.223372036854776e18) and then breaks every read of the principal. The step repairs
such rows (a float or text is rounded up to a whole number, saturating at 2^63-1: the ledger never counts less
than was spent) and adds the check. SQLite cannot add a CHECK to an existing table without rebuilding it,
which would lose columns that other steps add, so the check is made by triggers that abort any insert or
update leaving a credit column that is not a whole number, exactly as a CHECK would.
"""

from __future__ import annotations

_MESSAGE = "CHECK failed: credits must be whole numbers of at most 64 bits"
_SQLITE_COLUMNS = {
    "principals": ("budget", "spent", "reserved"),
    "reservations": ("credits", "charged"),
    "events": ("credits", "budget", "spent", "reserved"),
}
_NULLABLE = {"charged", "credits"}  # credits: nullable in events only (NOT NULL in reservations anyway)


def _repaired(column: str) -> str:
    real = f"CAST({column} AS REAL)"
    return (
        f"CASE WHEN typeof({column}) IN ('integer', 'null') THEN {column}"
        f" WHEN {real} >= 9223372036854775807.0 THEN 9223372036854775807 WHEN {real} <= 0 THEN 0"
        f" ELSE CAST({real} AS INTEGER) + ({real} > CAST({real} AS INTEGER)) END"
    )


def _not_whole(column: str, row: str = "") -> str:
    allowed = "('integer', 'null')" if column in _NULLABLE else "('integer')"
    return f"typeof({row}{column}) NOT IN {allowed}"


def _sqlite_step() -> str:
    statements = []
    for table, columns in _SQLITE_COLUMNS.items():
        sets = ", ".join(f"{c} = {_repaired(c)}" for c in columns)
        statements.append(f"UPDATE {table} SET {sets} WHERE {' OR '.join(_not_whole(c) for c in columns)}")
        bad = " OR ".join(_not_whole(c, "NEW.") for c in columns)
        for event in ("INSERT", "UPDATE") if table != "events" else ("INSERT",):
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_whole_credits_{event.lower()} AFTER {event} ON {table}"
                f" WHEN {bad} BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
            )
    return ";\n".join(statements)


SQLITE_WHOLE_CREDITS = _sqlite_step()
# BIGINT already keeps whole numbers; what both stores refuse besides is a negative hold or charge.
POSTGRES_WHOLE_CREDITS = (
    "ALTER TABLE apikey_reservations ADD CONSTRAINT apikey_reservations_whole_credits"
    " CHECK (credits >= 0 AND (charged IS NULL OR charged >= 0)) NOT VALID"
)
