"""The operator's input is validated: a close is charged 0 to the hold (more only with --over-hold REASON),
numbers beyond 64 bits are refused in one line, and a SQLite ledger keeps whole numbers only (step 4 repairs
the rows an overflow left as floats)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from apikey_mcp.budget import LedgerUnavailableError, Totals
from apikey_mcp.cli import main
from apikey_mcp.stores import open_store
from apikey_mcp.stores.upgrades import SQLITE_STEPS
from tests.ledger.conftest import database_url, postgres_schema

HUGE = str(2**64)


@contextmanager
def ledger(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A ledger with alice (budget 100) holding 2 credits; yields where it is and the reservation's id."""
    if kind == "sqlite":
        where = {"state_file": str(tmp_path / "state.sqlite3")}
        with _filled(where) as rid:
            yield {**where, "rid": rid}
        return
    database_url()
    with postgres_schema() as url:
        monkeypatch.setenv("APIKEY_DATABASE_URL", url)
        with _filled({"database_url": url}) as rid:
            yield {"database_url": url, "rid": rid}


@contextmanager
def _filled(where: dict[str, str]) -> Iterator[str]:
    async def fill() -> str:
        async with open_store(state_file=_path(where), database_url=where.get("database_url")) as store:
            await store.ensure_principal("alice", 100)
            return (await store.reserve("alice", 2, "chat with gpt-4o-mini")).id

    yield anyio.run(fill)


def _path(where: dict[str, str]) -> Path | None:
    return Path(where["state_file"]) if "state_file" in where else None


def admin(where: dict[str, str], capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`apikey-mcp admin ARGS` through the real CLI entry point: exit status, stdout, stderr."""
    place = ["--state-file", where["state_file"]] if "state_file" in where else []
    with pytest.raises(SystemExit) as exited:
        main(["admin", *place, *args])
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def totals(where: dict[str, str]) -> Totals:
    async def read() -> Totals:
        async with open_store(state_file=_path(where), database_url=where.get("database_url")) as store:
            return await store.totals("alice")

    return anyio.run(read)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_close_is_charged_at_most_the_hold_unless_over_hold_says_why(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with ledger(kind, tmp_path, monkeypatch) as where:
        rid = where["rid"]
        status, out, err = admin(where, capsys, "close", rid, "--charged", "1000000")
        assert (status, out) == (1, "") and err.count("\n") == 1
        assert "more than the 2 credits" in err and "--over-hold REASON" in err
        assert totals(where) == Totals(100, 0, 2)  # nothing changed
        status, out, err = admin(
            where, capsys, "close", rid, "--charged", "5", "--over-hold", "invoice 7 says 5", "--json"
        )
        assert status == 0, err
        assert json.loads(out)[0]["charged"] == 5 and totals(where) == Totals(100, 5, 0)
        status, out, _ = admin(where, capsys, "history", "--json")
        last = json.loads(out)[-2:]
        assert [(e["kind"], e["actor"], e["credits"], e["detail"]) for e in last] == [
            ("settle", "operator", 5, "invoice 7 says 5"),
            ("overcharge", "operator", 3, "charged 5 credits on a hold of 2: invoice 7 says 5"),
        ]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize(
    "args",
    [
        ["close", "RID", "--charged", HUGE],
        ["close", "RID", "--charged", HUGE, "--over-hold", "why not"],
        ["close", "RID", "--charged", "2**64"],
        ["close", "RID", "--charged", "-1"],
        ["close", "RID", "--charged", "1.5"],
        ["close", "RID", "--released", "--over-hold", "why"],
        ["set-budget", "alice", HUGE],
        ["set-budget", "alice", "-5"],
        ["reservations", "--limit", HUGE],
    ],
)
def test_numbers_no_ledger_can_keep_are_refused_in_one_line(
    kind: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with ledger(kind, tmp_path, monkeypatch) as where:
        status, out, err = admin(where, capsys, *[where["rid"] if a == "RID" else a for a in args])
        assert (status, out) == (1, "")
        assert err.startswith("apikey-mcp admin: ") and err.count("\n") == 1 and "Traceback" not in err
        assert totals(where) == Totals(100, 0, 2)


@pytest.mark.slow
def test_a_real_admin_process_refuses_2_to_the_64_without_a_traceback(tmp_path: Path) -> None:
    where = {"state_file": str(tmp_path / "state.sqlite3")}
    with _filled(where) as rid:
        command = [
            sys.executable,
            "-m",
            "apikey_mcp",
            "admin",
            "--state-file",
            where["state_file"],
            "close",
            rid,
            "--charged",
            HUGE,
            "--over-hold",
            "test",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")}
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"apikey-mcp admin: --charged must be from 0 to {2**63 - 1} credits (64 bits), not {HUGE}\n"


def test_an_overflow_cannot_leave_a_float_in_a_sqlite_ledger(tmp_path: Path, capsys) -> None:
    where = {"state_file": str(tmp_path / "state.sqlite3")}

    async def reserve_another() -> str:
        async with open_store(state_file=tmp_path / "state.sqlite3") as store:
            return (await store.reserve("alice", 1, "chat")).id

    async def overflow(other: str) -> None:
        async with open_store(state_file=tmp_path / "state.sqlite3") as store:
            with pytest.raises(LedgerUnavailableError, match="whole numbers of at most 64 bits"):
                await store.settle(other, 1)  # spent would pass 2^63-1: SQLite would have made it a float

    with _filled(where) as rid:
        other = anyio.run(reserve_another)
        status, _, err = admin(where, capsys, "close", rid, "--charged", str(2**63 - 1), "--over-hold", "test")
        assert status == 0, err
        status, _, err = admin(where, capsys, "close", other, "--charged", "1")  # refused before the store
        assert status == 1 and "past 64 bits" in err and err.count("\n") == 1
        anyio.run(overflow, other)  # and the store refuses it too
        assert totals(where) == Totals(100, 2**63 - 1, 1)


def test_step_4_repairs_floats_an_older_sqlite_ledger_holds(tmp_path: Path, capsys) -> None:
    where = {"state_file": str(tmp_path / "state.sqlite3")}
    with _filled(where):
        pass
    with sqlite3.connect(where["state_file"]) as conn:  # what the older code left after an overflow
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("UPDATE principals SET spent = 9.223372036854776e18, budget = 100.5")
        conn.execute("UPDATE events SET credits = 1.5e30 WHERE kind = 'reserve'")
    with sqlite3.connect(where["state_file"], isolation_level=None) as conn:  # step 4, as a ledger at 3 gets it
        conn.executescript(f"BEGIN; {SQLITE_STEPS[4]}; COMMIT;")
    status, out, err = admin(where, capsys, "principals", "--json")
    assert status == 0, err
    (row,) = json.loads(out)
    assert {k: row[k] for k in ("principal", "budget", "spent", "reserved", "remaining")} == {
        "principal": "alice",
        "budget": 101,
        "spent": 2**63 - 1,
        "reserved": 2,
        "remaining": 101 - 2**63 + 1 - 2,
    }
    with sqlite3.connect(where["state_file"]) as conn:
        kinds = conn.execute("SELECT typeof(budget), typeof(spent), typeof(reserved) FROM principals").fetchall()
        assert kinds == [("integer", "integer", "integer")]
        assert conn.execute("SELECT credits FROM events WHERE kind = 'reserve'").fetchone() == (2**63 - 1,)
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 4
        with pytest.raises(sqlite3.IntegrityError, match="whole numbers"):
            conn.execute("UPDATE principals SET spent = 2.5")
