"""Ledger stores: reserve-then-settle operations per second, memory beside SQLite and PostgreSQL, in one run.

One process first (one async caller, each operation awaited: the paid path's own pattern), then 4 processes
at once on one SQLite file and on one PostgreSQL database, all spending from the same principal (the worst
case: every operation contends for one row). Figures are ratios within this run; see bench/README.md.

    python bench/ledger_bench.py [--ops 2000] [--database-url postgresql://...]

The database URL defaults to APIKEY_TEST_DATABASE_URL (`.ci/postgres start DIR` prints one); without it the
PostgreSQL rows are left out. Each PostgreSQL run uses a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/harness.py: what the tests use too

from apikey_mcp.stores import open_store
from tests.harness import clean_env, postgres_schema

PRINCIPAL = "bench"
PROCESSES = 4


async def run_ops(kind: str, target: str | None, ops: int, start_at: float | None = None) -> tuple[float, float]:
    """Reserve then settle `ops` times; (start, end) wall-clock times of the timed part."""
    where = {"database_url": target} if kind == "postgres" else {"state_file": Path(target)} if target else {}
    async with open_store(**where) as store:
        await store.ensure_principal(PRINCIPAL, 10**15)
        if start_at is not None:
            await anyio.sleep(max(0.0, start_at - time.time()))  # every worker starts at the same instant
        start = time.time()
        for _ in range(ops):
            reservation = await store.reserve(PRINCIPAL, 10, "bench")
            await store.settle(reservation.id, 9)
        return start, time.time()


@contextmanager
def fresh_target(kind: str, database_url: str | None, folder: Path):
    if kind == "memory":
        yield None
    elif kind == "sqlite":
        yield str(folder / f"ledger-{uuid.uuid4().hex[:6]}.sqlite3")
    else:
        assert database_url is not None
        with postgres_schema(database_url, "bench") as url:
            yield url


def one_process(kind: str, target: str | None, ops: int) -> float:
    start, end = anyio.run(run_ops, kind, target, ops)
    return ops / (end - start)


def many_processes(kind: str, target: str, ops: int) -> float:
    if kind == "sqlite":
        anyio.run(run_ops, kind, target, 0)  # create the file first: a second opener must find it whole
    start_at = time.time() + 2.0
    command = [sys.executable, __file__, "--worker", kind, target, str(ops), str(start_at)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=clean_env()) for _ in range(PROCESSES)]
    spans = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
    if any(w.returncode for w in workers):
        raise SystemExit("a worker failed")
    return PROCESSES * ops / (max(end for _, end in spans) - min(start for start, _ in spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="reserve-then-settle pairs per process")
    parser.add_argument("--database-url", default=os.environ.get("APIKEY_TEST_DATABASE_URL"))
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "TARGET", "OPS", "START_AT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, target, ops, start_at = args.worker
        print(json.dumps(anyio.run(run_ops, kind, target, int(ops), float(start_at))))
        return
    kinds = ["memory", "sqlite"] + (["postgres"] if args.database_url else [])
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in kinds:
            with fresh_target(kind, args.database_url, Path(folder)) as target:
                rows.append((f"{kind}, 1 process", one_process(kind, target, args.ops)))
        for kind in kinds[1:]:
            with fresh_target(kind, args.database_url, Path(folder)) as target:
                assert target is not None
                rows.append((f"{kind}, {PROCESSES} processes", many_processes(kind, target, args.ops)))
    memory = rows[0][1]
    print(f"reserve-then-settle, {args.ops} pairs per process, one principal")
    print(f"{'store':<26}{'pairs/s':>12}{'vs memory':>12}")
    for name, rate in rows:
        print(f"{name:<26}{rate:>12,.0f}{rate / memory:>12.4f}")
    if not args.database_url:
        print("(PostgreSQL left out: no --database-url or APIKEY_TEST_DATABASE_URL)")


if __name__ == "__main__":
    main()
