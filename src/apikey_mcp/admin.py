"""`apikey-mcp admin`: the operator's hand on the ledger a hosted server uses, from outside the server.

It works on the same store (`--state-file` or `--database-url`, as the server takes them). Every change is
one store transaction, recorded in the audit trail as made by the operator, and a running server sees it at
its next call: the server reads budgets from the store, it keeps no copy of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from . import report
from .budget import OPERATOR, LedgerStore, Reservation, Totals, UnknownPrincipalError
from .errors import ConfigError, LedgerError
from .paths import default_state_file
from .periods import PERIODS
from .policy import Policy
from .stores.common import INT64_MAX

PAGE = 1000


def add_command(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """The `admin` command and its subcommands, added with the main command's `add_parser`. The ledger options
    are accepted before the subcommand and after it (`admin principals --state-file F`)."""
    ledger = argparse.ArgumentParser(add_help=False)
    one = ledger.add_mutually_exclusive_group()
    where = f"the server's SQLite ledger (env APIKEY_STATE_FILE; default {default_state_file()})"
    one.add_argument("--state-file", default=argparse.SUPPRESS, metavar="FILE", help=where)
    one.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the server's PostgreSQL ledger instead (prefer env APIKEY_DATABASE_URL)",
    )
    p = add_parser(
        "admin",
        parents=[ledger],
        help="the operator's commands on a hosted server's ledger",
        description="The operator's commands on the ledger of a hosted server (budgets, reservations, audit trail). "
        "A change takes effect in running servers at their next call.",
    )
    p.set_defaults(admin_help=p.format_help)
    commands = p.add_subparsers(dest="admin_command", title="commands", metavar="COMMAND")
    json_flag = argparse.ArgumentParser(add_help=False, parents=[ledger])
    json_flag.add_argument("--json", action="store_true", help="machine-readable output")

    def command(name: str, what: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[json_flag], help=what, description=f"{what[0].upper()}{what[1:]}.")

    command("principals", "budget, spent, reserved, remaining and policy of each principal")
    budget = command("set-budget", "set a principal's budget (or create the principal)")
    budget.add_argument("name", help="the principal (its token's name, or <issuer>#<subject> with OAuth)")
    budget.add_argument("credits", help="its new budget, in whole credits (0 to 2^63-1)")
    policy = command("set-policy", "set a principal's spending policy (flags not given stay as they are)")
    policy.add_argument("name", help="the principal")
    policy.add_argument("--max-per-call", metavar="N|none", help="refuse a call estimated above N credits")
    policy.add_argument(
        "--allow",
        metavar="MODEL_OR_MODALITY,...|all",
        help="only these models or modalities (image, video, music, chat, embedding)",
    )
    policy.add_argument("--period", choices=PERIODS, help="the budget renews each day, week or month (UTC)")
    policy.add_argument("--alert-at", metavar="PERCENT|none", help="alert at this percent of the budget (and 100)")
    listing = command("reservations", "reservations, newest first")
    listing.add_argument("--open", action="store_true", help="only those still holding credits")
    listing.add_argument(
        "--lost", action="store_true", help="only open ones whose task the gateway stopped knowing (close them by hand)"
    )
    listing.add_argument("--principal", help="only this principal's")
    listing.add_argument("--limit", default="100", help="at most this many (default 100)")
    close = command("close", "close a reservation that no server can close (its task is lost or unknown)")
    close.add_argument("reservation_id", help="its id (reservations --open lists them; the server logs name them)")
    how = close.add_mutually_exclusive_group(required=True)
    how.add_argument("--charged", metavar="N", help="settle it: the gateway charged N credits (0 to the hold)")
    how.add_argument("--released", action="store_true", help="release it: nothing was charged")
    close.add_argument(
        "--over-hold", metavar="REASON", help="with --charged: allow more than the hold; REASON goes into the audit"
    )
    history = command("history", "export the audit trail, oldest first")
    history.add_argument("--principal", help="only this principal's")
    report.add_command(commands.add_parser, [ledger])


def run(args: argparse.Namespace) -> int:
    """Run one admin command; the exit status (0 done, 1 refused, 2 no command or cannot open the ledger)."""
    if args.admin_command is None:  # `apikey-mcp admin` alone: what it can do, not "arguments are required"
        print(args.admin_help(), file=sys.stderr, end="")
        return 2
    from .config import Settings
    from .stores import StoreRefusedError, open_store

    overrides = {k: getattr(args, k) for k in ("state_file", "database_url") if getattr(args, k, None)}
    if len(overrides) == 2:  # one before the command, the other after it: argparse sees each part alone
        print("apikey-mcp admin: give --state-file or --database-url, not both", file=sys.stderr)
        return 2
    settings = Settings(**overrides)
    url = settings.database_url.get_secret_value() if settings.database_url else None
    state_file = None if url else Path(settings.state_file or default_state_file())
    if state_file is not None and not state_file.exists():
        print(
            f"apikey-mcp admin: there is no ledger at {state_file} (give --state-file or --database-url)",
            file=sys.stderr,
        )
        return 2

    async def main() -> int:
        async with open_store(database_url=url, state_file=state_file) as store:
            return await _command(store, args)

    try:
        return anyio.run(main)
    except StoreRefusedError as exc:
        print(f"apikey-mcp admin: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, LedgerError, ValueError) as exc:  # the operator's input refused: one line, never a traceback
        return _fail(str(exc))


def _whole(text: str, what: str) -> int:
    """A number of credits the ledger can keep (a whole number, 0 to 2^63-1), or a one-line refusal."""
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what} must be a whole number of credits, not {text[:40]!r}") from None
    if not 0 <= value <= INT64_MAX:
        raise ConfigError(f"{what} must be from 0 to {INT64_MAX} credits (64 bits), not {text[:40]}")
    return value


async def _command(store: LedgerStore, args: argparse.Namespace) -> int:
    command = args.admin_command
    if command == "report":
        return await _report(store, args)
    if command == "principals":
        policies = await store.policies()
        rows = [
            {"principal": name, **_totals(t), **_policy(policies.get(name, Policy()))}
            for name, t in await store.principals()
        ]
        return _out(args, rows, ["principal", "budget", "spent", "reserved", "remaining", *POLICY_COLUMNS])
    if command == "set-policy":
        return await _set_policy(store, args)
    if command == "set-budget":
        totals = await store.set_budget(args.name, _whole(args.credits, "the budget"), OPERATOR)
        if totals.remaining < 0:  # done, as asked; but the operator must know what it means
            print(
                f"apikey-mcp admin: warning: {args.name} has already used {totals.spent + totals.reserved} "
                f"credits ({totals.spent} spent, {totals.reserved} reserved), more than the new budget of "
                f"{totals.budget}: remaining is {totals.remaining}, and {args.name}'s paid calls are refused "
                "until the budget is raised.",
                file=sys.stderr,
            )
        return _out(
            args,
            [{"principal": args.name, **_totals(totals)}],
            ["principal", "budget", "spent", "reserved", "remaining"],
        )
    if command == "reservations":
        limit = _whole(args.limit, "--limit")
        found = await store.reservations(args.principal, open_only=args.open, limit=limit, lost_only=args.lost)
        columns = ["id", "principal", "state", "credits", "charged", "task_id", "purpose", "gateway", "created"]
        return _out(args, [_reservation(r) for r in found], columns + ["lost"] * args.lost)
    if command == "close":
        return await _close(store, args)
    events: list[dict[str, Any]] = []
    while batch := await store.history(args.principal, limit=PAGE, offset=len(events)):
        events += [{**asdict(e), "at": _when(e.at), "totals": _totals(e.totals)} for e in batch]
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    flat = [{**e, "remaining": e["totals"]["remaining"]} for e in events]
    return _out(args, flat, ["seq", "at", "principal", "kind", "actor", "credits", "reservation_id", "remaining"])


async def _close(store: LedgerStore, args: argparse.Namespace) -> int:
    """Settle (0 to the hold, more only with --over-hold REASON) or release one open reservation."""
    rid = args.reservation_id
    if args.released:
        if args.over_hold is not None:
            return _fail("--over-hold goes with --charged, not --released")
        closed = await store.release(rid, actor=OPERATOR)
    else:
        charged = _whole(args.charged, "--charged")
        held = await store.reservation(rid)
        if held is None:
            return _fail(f"reservation {rid} was not closed: there is no such reservation")
        if charged > held.credits and not args.over_hold:
            return _fail(
                f"--charged {charged} is more than the {held.credits} credits reservation {rid} holds; if the "
                "gateway really charged that, add --over-hold REASON (recorded in the audit trail)"
            )
        if (await store.totals(held.principal)).spent + charged > INT64_MAX:
            return _fail(f"--charged {charged} would take {held.principal}'s spent credits past 64 bits")
        closed = await store.settle(rid, charged, actor=OPERATOR, detail=args.over_hold or None)
    record = await store.reservation(rid)
    if not closed:
        state = f"it is {record.state}" if record else "there is no such reservation"
        return _fail(f"reservation {rid} was not closed: {state}")
    assert record is not None
    return _out(args, [_reservation(record)], ["id", "principal", "state", "credits", "charged", "task_id"])


POLICY_COLUMNS = ["max_per_call", "allow", "period", "alert_at"]


def _policy(policy: Policy) -> dict[str, Any]:
    return {
        "max_per_call": policy.max_per_call,
        "allow": ",".join(policy.allow) or None,
        "period": policy.period,
        "alert_at": policy.alert_at,
    }


async def _set_policy(store: LedgerStore, args: argparse.Namespace) -> int:
    """Change what was given, keep the rest; `none` (or `all` for --allow) lifts a rule."""
    try:
        current = await store.policy(args.name)
    except UnknownPrincipalError:
        return _fail(f"there is no principal '{args.name}': set its budget first (admin set-budget {args.name} N)")
    try:
        changes: dict[str, Any] = {}
        if args.max_per_call is not None:
            changes["max_per_call"] = None if args.max_per_call == "none" else int(args.max_per_call)
        if args.alert_at is not None:
            changes["alert_at"] = None if args.alert_at == "none" else int(args.alert_at)
        if args.allow is not None:
            changes["allow"] = Policy.of(None, "" if args.allow == "all" else args.allow, None, None).allow
        if args.period is not None:
            changes["period"] = args.period
        chosen = Policy(**{**vars(current), **changes})
    except ValueError as exc:
        return _fail(
            str(exc)
            if str(exc).startswith("--")
            else f"--max-per-call and --alert-at take a whole number or 'none' ({exc})"
        )
    await store.set_policy(args.name, chosen, OPERATOR)
    totals = await store.totals(args.name)
    return _out(
        args,
        [{"principal": args.name, **_totals(totals), **_policy(chosen)}],
        ["principal", "budget", "remaining", *POLICY_COLUMNS],
    )


def _totals(totals: Totals) -> dict[str, int]:
    return {"budget": totals.budget, "spent": totals.spent, "reserved": totals.reserved, "remaining": totals.remaining}


def _reservation(r: Reservation) -> dict[str, Any]:
    return {
        "id": r.id,
        "principal": r.principal,
        "state": str(r.state),
        "credits": r.credits,
        "charged": r.charged,
        "task_id": r.task_id,
        "purpose": r.purpose,
        "model": r.model,
        "modality": r.modality,
        "gateway": r.gateway,
        "created": _when(r.created_at),
        "lost": _when(r.lost_at) if r.lost_at is not None else None,
    }


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


async def _report(store: LedgerStore, args: argparse.Namespace) -> int:
    try:
        made = await report.gather(store, args)
    except ValueError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(made.as_json(), indent=2))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, made.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(made.rows)
    else:
        _table([*made.rows, made.total()], made.columns)
    return 0


def _out(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> int:
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _table(rows, columns)
    return 0


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[str(row.get(c, "")) if row.get(c) is not None else "-" for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [columns, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _fail(message: str) -> int:
    print(f"apikey-mcp admin: {message}", file=sys.stderr)
    return 1
