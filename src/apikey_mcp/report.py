"""`apikey-mcp admin report`: credits spent, paid calls and refusals over a period, by principal, model or day.

`--since` takes a span back from now (`7d`, `24h`, `30m`) or a UTC date (`2026-12-01`); days are UTC days.
The totals are the ledger's own: the sum of its settlements (what was charged), its reservations (paid calls
made) and its `refuse` events, grouped in the store's query.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from .budget import REPORT_BY, LedgerStore

_SPAN = re.compile(r"^(\d{1,6})([dhm])$")
_UNIT = {"d": 86400, "h": 3600, "m": 60}
DEFAULT_SINCE = "30d"


def add_command(add_parser: Callable[..., argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """`admin report`, added with the `add_parser` of admin's subcommands."""
    what = "credits spent, calls and refusals over time (UTC days)"
    p = add_parser("report", parents=parents, help=what, description=f"{what[0].upper()}{what[1:]}.")
    p.add_argument("--since", default=DEFAULT_SINCE, help="7d, 24h, 30m or a UTC date 2026-12-01 (default 30d)")
    p.add_argument("--by", choices=REPORT_BY, default="principal", help="group by (default principal)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="machine-readable output")
    form.add_argument("--csv", action="store_true", help="CSV with a header line")


def since(text: str, now: float | None = None) -> float:
    """Epoch seconds for `--since`; ValueError with what is accepted."""
    now = time.time() if now is None else now
    if match := _SPAN.match(text.strip()):
        return now - int(match[1]) * _UNIT[match[2]]
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        wanted = "give a span such as 7d, 24h or 30m, or a date such as 2026-12-01"
        raise ValueError(f"--since {text[:40]!r}: {wanted}") from None


@dataclass
class Report:
    """What `admin report` shows (admin.py prints it): rows of credits spent, paid calls and refusals."""

    since: float
    columns: list[str]
    rows: list[dict[str, Any]]

    def total(self) -> dict[str, Any]:
        by, *figures = self.columns
        return {by: "total", **{c: sum(r[c] for r in self.rows) for c in figures}}

    def as_json(self) -> dict[str, Any]:
        return {
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds"),
            "by": self.columns[0],
            "rows": self.rows,
        }


async def gather(store: LedgerStore, args: argparse.Namespace) -> Report:
    """The report the arguments ask for; ValueError (its message for the operator) for a bad --since."""
    start = since(args.since)
    rows = [asdict(r) for r in await store.report(start, args.by)]
    for row in rows:
        row[args.by] = row.pop("key")
    return Report(start, [args.by, "spent", "calls", "refusals"], rows)
