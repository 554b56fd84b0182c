"""The SQL the SQLite and PostgreSQL stores have in common, written once, and the reading of the rows it returns.

A statement is written with `?` for each parameter and `{t}` before each table name; each store renders the
set once with its own mark (`?`, `%s`) and table prefix (none, `apikey_`). What only one database can say (the
reservation in one statement, `INSERT OR IGNORE`, the day of a timestamp) stays with its store.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..budget import Reservation, ReservationState

RESERVATION_COLUMNS = (
    "id, principal, credits, purpose, task_id, state, charged, modality, own_key, created_at, model, gateway, lost_at,"
    " period_start"
)
POLICY_COLUMNS = "max_per_call, allow, period, alert_at"
EVENT_COLUMNS = "seq, at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail, model"


@dataclass(frozen=True)
class Statements:
    """The shared statements, as templates until `rendered` for one database."""

    mark: str = "?"  # the parameter mark itself, rendered like every statement
    # the audit line: (at, kind, actor, reservation, credits, detail, model, principal), with the totals after it
    log_event: str = (
        "INSERT INTO {t}events (at, principal, kind, actor, reservation_id, credits, budget, spent, reserved, detail,"
        " model) SELECT ?, name, ?, ?, ?, ?, budget, spent, reserved, ?, ? FROM {t}principals WHERE name = ?"
    )
    totals: str = "SELECT budget, spent, reserved, period, period_start FROM {t}principals WHERE name = ?"
    all_totals: str = "SELECT name, budget, spent, reserved, period, period_start FROM {t}principals ORDER BY name"
    period_of: str = "SELECT period, period_start, spent FROM {t}principals WHERE name = ?"
    renew_period: str = "UPDATE {t}principals SET period_start = ?, spent = 0 WHERE name = ?"
    attach: str = (
        "UPDATE {t}reservations SET task_id = ?, modality = coalesce(?, modality)"
        " WHERE id = ? AND state = 'reserved' RETURNING principal"
    )
    mark_lost: str = (
        "UPDATE {t}reservations SET lost_at = ? WHERE id = ? AND state = 'reserved' AND lost_at IS NULL"
        " RETURNING principal, task_id, model"
    )
    policy: str = f"SELECT {POLICY_COLUMNS} FROM {{t}}principals WHERE name = ?"
    policies: str = f"SELECT name, {POLICY_COLUMNS} FROM {{t}}principals ORDER BY name"
    kind_of_period: str = "SELECT period FROM {t}principals WHERE name = ?"
    # a new kind of period starts now, keeping what was spent and held in the current one
    move_open_holds: str = (
        "UPDATE {t}reservations SET period_start = ? WHERE principal = ? AND state = 'reserved' AND period_start = ?"
    )
    move_period: str = "UPDATE {t}principals SET period_start = ? WHERE name = ?"
    set_policy: str = "UPDATE {t}principals SET max_per_call = ?, allow = ?, period = ?, alert_at = ? WHERE name = ?"
    set_budget: str = (
        "INSERT INTO {t}principals (name, budget) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET budget = excluded.budget"
    )
    reservation: str = f"SELECT {RESERVATION_COLUMNS} FROM {{t}}reservations WHERE id = ?"
    task_reservation: str = (
        f"SELECT {RESERVATION_COLUMNS} FROM {{t}}reservations WHERE task_id = ? AND principal = ?"
        " ORDER BY created_at DESC LIMIT 1"
    )
    forget_signatures: str = "DELETE FROM {t}callbacks WHERE received_at < ?"
    reservations: str = f"SELECT {RESERVATION_COLUMNS} FROM {{t}}reservations"
    events: str = f"SELECT {EVENT_COLUMNS} FROM {{t}}events"
    # credits charged, paid calls and refusals, grouped by a key the store names (`{key}`)
    report: str = (
        "SELECT {key} AS k, coalesce(sum(credits) FILTER (WHERE kind = 'settle'), 0),"
        " count(*) FILTER (WHERE kind = 'reserve'), count(*) FILTER (WHERE kind = 'refuse') FROM {t}events"
        " WHERE at >= ? AND kind IN ('reserve', 'settle', 'refuse') GROUP BY k ORDER BY k"
    )

    def rendered(self, prefix: str, mark: str) -> Statements:
        """The statements for one database: `prefix` before each table name, `mark` for each parameter."""
        text = {f.name: getattr(self, f.name).replace("{t}", prefix).replace("?", mark) for f in fields(self)}
        return Statements(**text)

    def report_by(self, key: str) -> str:
        """The report grouped by `key`, an expression over the events table."""
        return self.report.replace("{key}", key)

    def reservations_where(
        self, principal: str | None, *, open_only: bool, lost_only: bool, limit: int, offset: int
    ) -> tuple[str, list[Any]]:
        """A page of reservations, newest first: the statement and its parameters."""
        mark = self.mark
        where = ["1 = 1"] + [f"principal = {mark}"] * (principal is not None) + ["state = 'reserved'"] * open_only
        where += ["state = 'reserved' AND lost_at IS NOT NULL"] * lost_only
        sql = f"{self.reservations} WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT {mark} OFFSET {mark}"
        return sql, [*([principal] if principal is not None else []), limit, offset]

    def events_of(self, principal: str | None, *, limit: int, offset: int) -> tuple[str, list[Any]]:
        """A page of the audit trail, oldest first: the statement and its parameters."""
        mark = self.mark
        where, params = (f" WHERE principal = {mark}", [principal]) if principal is not None else ("", [])
        return f"{self.events}{where} ORDER BY seq LIMIT {mark} OFFSET {mark}", [*params, limit, offset]


def reservation_columns(alias: str) -> str:
    """`RESERVATION_COLUMNS` of a table named `alias` in a join."""
    return ", ".join(f"{alias}.{name}" for name in RESERVATION_COLUMNS.split(", "))


def reservation_of(row: tuple[Any, ...]) -> Reservation:
    """A reservation from a row of `RESERVATION_COLUMNS`."""
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


SQLITE = Statements().rendered("", "?")
POSTGRES = Statements().rendered("apikey_", "%s")
