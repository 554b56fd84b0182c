"""The three ledger stores, each fresh per test: memory, SQLite in tmp_path, PostgreSQL in a schema of its own.

PostgreSQL needs a server: the test session starts a throwaway one from the installed binaries (see
tests/provision.py) unless APIKEY_TEST_DATABASE_URL names one. Without either, the PostgreSQL tests skip
locally, naming the package to install, but fail in CI (CI=true), so they can never silently not run there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from apikey_mcp.budget import LedgerStore
from apikey_mcp.stores import MemoryLedgerStore
from tests import harness
from tests.provision import missing

STORES = ["memory", "sqlite", "postgres"]


def database_url() -> str:
    """The test server's URL, or a skip (a failure in CI)."""
    url = os.environ.get("APIKEY_TEST_DATABASE_URL")  # read late: the session may have started one just now
    if not url:
        missing("PostgreSQL (its server binaries, for a throwaway cluster)", "postgresql")
    assert url is not None
    return url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL whose tables live in a fresh schema, dropped afterwards."""
    with harness.postgres_schema(database_url()) as url:
        yield url


@asynccontextmanager
async def make_store(kind: str, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    from apikey_mcp.stores import open_store

    if kind == "memory":
        store = MemoryLedgerStore()
        yield store
    elif kind == "sqlite":
        async with open_store(state_file=tmp_path / f"ledger-{uuid.uuid4().hex[:6]}.sqlite3") as store:
            yield store
    else:
        with postgres_schema() as url:
            async with open_store(database_url=url) as store:
                yield store


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        database_url()
    return request.param


@pytest.fixture
async def store(store_kind: str, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    async with make_store(store_kind, tmp_path) as opened:
        yield opened
