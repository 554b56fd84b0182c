"""What `admin report` reads, the same for every store: reservations record their model, modality and gateway,
refusals are `refuse` events with their reason, and the report's totals by principal, model and day equal the
ledger's own."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from apikey_mcp.budget import BudgetExceededError, Hold, LedgerStore, ReportRow
from apikey_mcp.stores import open_store, upgrades
from apikey_mcp.stores.sqlite import SqliteLedgerStore
from apikey_mcp.stores.upgrades import LATEST


async def _spend(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    await store.ensure_principal("bob", 50)
    video = Hold("video with seedance-2", "seedance-2", "video", "http://gw.example")
    a = await store.reserve("alice", 60, "video with seedance-2", hold=video)
    await store.settle(a.id, 55)
    b = await store.reserve("bob", 20, "chat with gpt-4o-mini", hold=Hold("chat", "gpt-4o-mini", "chat"))
    await store.settle(b.id, 3)
    c = await store.reserve("bob", 10, "chat with gpt-4o-mini", hold=Hold("chat", "gpt-4o-mini", "chat"))
    await store.release(c.id)
    with pytest.raises(BudgetExceededError):
        await store.reserve("alice", 90, "video with seedance-2", hold=video)


async def test_a_reservation_records_its_model_modality_and_gateway(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    hold = Hold("video with seedance-2", "seedance-2", "video", "http://gw.example")
    made = await store.reserve("alice", 10, "video with seedance-2", hold=hold)
    read = await store.reservation(made.id)
    assert read is not None and (read.model, read.modality, read.gateway) == (
        "seedance-2",
        "video",
        "http://gw.example",
    )
    assert (made.model, made.gateway) == ("seedance-2", "http://gw.example")


async def test_a_refusal_is_an_event_with_its_reason_and_holds_nothing(store: LedgerStore) -> None:
    await store.ensure_principal("alice", 100)
    with pytest.raises(BudgetExceededError):
        await store.reserve("alice", 150, "video with seedance-2", hold=Hold("video", "seedance-2", "video"))
    refused = (await store.history("alice"))[-1]
    assert (refused.kind, refused.credits, refused.model, refused.reservation_id) == ("refuse", 150, "seedance-2", None)
    assert refused.detail is not None and "over budget" in refused.detail and "100 remain" in refused.detail
    assert (await store.totals("alice")).reserved == 0


async def test_the_report_totals_equal_the_ledgers(store: LedgerStore) -> None:
    await _spend(store)
    by_principal = await store.report(0, "principal")
    assert by_principal == [ReportRow("alice", 55, 1, 1), ReportRow("bob", 3, 2, 0)]
    for name, totals in await store.principals():
        assert next(r.spent for r in by_principal if r.key == name) == totals.spent
    assert await store.report(0, "model") == [ReportRow("gpt-4o-mini", 3, 2, 0), ReportRow("seedance-2", 55, 1, 1)]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert await store.report(0, "day") == [ReportRow(today, 58, 3, 1)]
    assert await store.report(time.time() + 60, "principal") == []  # --since after it all: nothing


async def test_an_existing_sqlite_ledger_is_migrated_to_the_report_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.sqlite3"
    with monkeypatch.context() as older:  # a ledger written before step 5, with one open reservation
        older.setattr(upgrades, "SQLITE_STEPS", {n: sql for n, sql in upgrades.SQLITE_STEPS.items() if n < 5})
        SqliteLedgerStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO principals (name, budget, reserved) VALUES ('alice', 100, 10)")
        conn.execute(
            "INSERT INTO reservations (id, principal, credits, purpose, state, created_at)"
            " VALUES ('old', 'alice', 10, 'video', 'reserved', ?)",
            (time.time(),),
        )
        conn.execute(
            "INSERT INTO events (at, principal, kind, actor, reservation_id, credits, budget, spent,"
            " reserved) VALUES (?, 'alice', 'reserve', 'principal:alice', 'old', 10, 100, 0, 10)",
            (time.time(),),
        )
    async with open_store(state_file=path) as store:
        assert (await store.reservation("old")).model is None  # type: ignore[union-attr]
        await store.settle("old", 7)
        assert await store.report(0, "principal") == [ReportRow("alice", 7, 1, 0)]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST >= 5
