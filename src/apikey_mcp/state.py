"""The hosted server's state file: per-principal budgets, reservations, tasks and seen callbacks, in SQLite.

Ledger and registry changes are queued in order the moment they happen (synchronously, so the queue order
is the order of events) and written by one writer task off the event loop; `flush()` waits until all
that was queued is committed. A paid call flushes after reserving and before its create is sent, and
again once the task id is known, so even `kill -9` mid-create resets no budget and loses no task id.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .budget import Reservation, ReservationState, Snapshot
from .gateway.models import Task

log = logging.getLogger(__name__)
_Op = Callable[[sqlite3.Connection], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY, budget INTEGER NOT NULL, spent INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL, credits INTEGER NOT NULL, purpose TEXT NOT NULL,
    task_id TEXT, state TEXT NOT NULL, charged INTEGER, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, principal TEXT NOT NULL, modality TEXT, reservation_id TEXT, own_key INTEGER NOT NULL,
    terminal INTEGER NOT NULL, body TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS callbacks (signature TEXT PRIMARY KEY, received_at REAL NOT NULL);
"""


@dataclass
class SavedTask:
    task: Task
    modality: str | None
    reservation_id: str | None
    own_key: bool = False  # created with the principal's own gateway key, which is not stored


@dataclass
class SavedPrincipal:
    budget: int
    spent: int
    reservations: list[Reservation] = field(default_factory=list)
    unfinished: list[SavedTask] = field(default_factory=list)


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._send: MemoryObjectSendStream[_Op | anyio.Event] | None = None

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[StateStore]:
        """Open the file, run the writer, and on the way out write everything still queued."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await anyio.to_thread.run_sync(self._connect)
        send, receive = anyio.create_memory_object_stream[_Op | anyio.Event](max_buffer_size=10_000)
        self._send = send
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._writer, receive)
                try:
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.flush()
                        await send.aclose()
        finally:
            self._send = None
            await anyio.to_thread.run_sync(self._conn.close)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")  # a commit survives the process being killed
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return conn

    async def _writer(self, receive: MemoryObjectReceiveStream[_Op | anyio.Event]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while True:  # everything queued so far goes in one transaction
                    try:
                        batch.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                ops = [op for op in batch if not isinstance(op, anyio.Event)]
                if ops:
                    try:
                        await anyio.to_thread.run_sync(self._commit, ops)
                    except sqlite3.Error:
                        log.exception("could not write the state file %s", self.path)
                for op in batch:
                    if isinstance(op, anyio.Event):
                        op.set()

    def _commit(self, ops: list[_Op]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("BEGIN")
            for op in ops:
                op(self._conn)

    def _queue(self, op: _Op | anyio.Event) -> None:
        if self._send is None:
            raise RuntimeError("the state store is not open")
        self._send.send_nowait(op)

    async def flush(self) -> None:
        """Wait until every change queued so far is committed to the file."""
        done = anyio.Event()
        self._queue(done)
        await done.wait()

    # ------------------------------------------------------------ what is recorded

    def record_ledger(self, principal: str, snapshot: Snapshot, reservation: Reservation | None) -> None:
        now = time.time()
        row = None
        if reservation is not None:
            row = (reservation.id, principal, reservation.credits, reservation.purpose, reservation.task_id,
                   str(reservation.state), reservation.charged, now)  # fmt: skip

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO principals VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET budget=?, spent=?",
                (principal, snapshot.budget, snapshot.spent, snapshot.budget, snapshot.spent),
            )
            if row is not None:
                conn.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

        self._queue(write)

    def record_task(
        self, principal: str, task: Task, modality: str | None, reservation: Reservation | None, *, own_key: bool
    ) -> None:
        row = (task.task_id, principal, modality, reservation.id if reservation else None, int(own_key),
               int(task.is_terminal), task.model_dump_json(exclude_none=True), time.time())  # fmt: skip

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

        self._queue(write)

    async def first_sighting(self, signature: str, *, keep_seconds: float) -> bool:
        """Remember a callback's signature; False if it was seen before (a replay) or cannot be recorded."""
        first: list[bool] = []

        def check(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("DELETE FROM callbacks WHERE received_at < ?", (now - keep_seconds,))
            inserted = conn.execute("INSERT OR IGNORE INTO callbacks VALUES (?, ?)", (signature, now))
            first.append(inserted.rowcount == 1)

        self._queue(check)
        await self.flush()
        return first == [True]

    # ------------------------------------------------------------ what is restored

    def load(self) -> dict[str, SavedPrincipal]:
        """Every principal's budget, open reservations and unfinished tasks, as the file has them."""
        assert self._conn is not None
        principals = self._conn.execute("SELECT name, budget, spent FROM principals")
        saved = {name: SavedPrincipal(budget, spent) for name, budget, spent in principals}
        rows = self._conn.execute(
            "SELECT id, principal, credits, purpose, task_id FROM reservations WHERE state = ?",
            (str(ReservationState.RESERVED),),
        )
        for id_, principal, credits, purpose, task_id in rows:
            saved[principal].reservations.append(Reservation(id_, credits, purpose, task_id))
        rows = self._conn.execute(
            "SELECT principal, modality, reservation_id, own_key, body FROM tasks WHERE terminal = 0"
        )
        for principal, modality, reservation_id, own_key, body in rows:
            task = Task.model_validate_json(body)
            saved[principal].unfinished.append(SavedTask(task, modality, reservation_id, bool(own_key)))
        return saved

    async def load_async(self) -> dict[str, SavedPrincipal]:
        return await anyio.to_thread.run_sync(self.load)
