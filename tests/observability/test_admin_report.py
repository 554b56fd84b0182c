"""`apikey-mcp admin report` on SQLite and PostgreSQL: its totals equal the ledger's, as JSON, CSV or a table."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import anyio
import pytest

from apikey_mcp.budget import BudgetExceededError, Hold
from apikey_mcp.stores import open_store
from tests.ledger.conftest import database_url, postgres_schema

pytestmark = pytest.mark.slow  # admin processes


async def _report(where: list[str], *args: str) -> str:
    done = await anyio.run_process([sys.executable, "-m", "apikey_mcp", "admin", *where, "report", *args], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def _check(where: list[str], **store_at: str | Path) -> None:
    async with open_store(**store_at) as store:  # type: ignore[arg-type]
        for name, budget in (("alice", 100), ("bob", 40)):
            await store.ensure_principal(name, budget)
        for name, credits, model, charged in (("alice", 30, "seedance-2", 28), ("bob", 10, "gpt-4o-mini", 2)):
            held = await store.reserve(name, credits, model, hold=Hold(model, model, "video"))
            await store.settle(held.id, charged)
        with pytest.raises(BudgetExceededError):
            await store.reserve("bob", 100, "too much", hold=Hold("x", "seedance-2", "video"))
        ledger = dict(await store.principals())
    rows = json.loads(await _report(where, "--json", "--since", "2020-01-01"))["rows"]
    assert {r["principal"]: r["spent"] for r in rows} == {n: t.spent for n, t in ledger.items()}
    assert [(r["calls"], r["refusals"]) for r in rows] == [(1, 0), (1, 1)]
    by_model = list(csv.DictReader(io.StringIO(await _report(where, "--csv", "--by", "model"))))
    assert [(r["model"], r["spent"], r["refusals"]) for r in by_model] == [
        ("gpt-4o-mini", "2", "0"),
        ("seedance-2", "28", "1"),
    ]
    by_day = json.loads(await _report(where, "--json", "--by", "day", "--since", "7d"))["rows"]
    assert len(by_day) == 1 and by_day[0]["spent"] == 30
    assert "total" in await _report(where)  # the table ends with the totals


async def test_admin_report_on_sqlite_equals_the_ledger(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    await _check(["--state-file", str(state)], state_file=state)


async def test_admin_report_on_postgresql_equals_the_ledger() -> None:
    database_url()
    with postgres_schema() as url:
        await _check(["--database-url", url], database_url=url)


async def test_a_since_that_is_neither_a_span_nor_a_date_is_refused_clearly(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    async with open_store(state_file=state):
        pass
    done = await anyio.run_process(
        [sys.executable, "-m", "apikey_mcp", "admin", "--state-file", str(state), "report", "--since", "last tuesday"],
        check=False,
    )
    assert done.returncode == 1 and b"give a span such as 7d" in done.stderr and b"Traceback" not in done.stderr
