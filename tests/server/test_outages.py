"""Gateway faults a watcher must survive: every error backs off (resumed tasks too), repeats are logged once a
minute, and a task the gateway stopped knowing is lost only after a minute of 404s, keeping its hold (each of
them, when the gateway answered more than one create with that task).

Time belongs to the test (ManualTime): a watcher that never sleeps would never let the test's clock matter,
so a tight loop shows as a watcher that is never seen asleep.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
from mcp import Client

from apikey_mcp.budget import LedgerStore, ReservationState
from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import ImageRequest, Task
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.sandbox import engine as sandbox_engine
from apikey_mcp.server import build_server
from apikey_mcp.stores import MemoryLedgerStore
from apikey_mcp.tasks import TaskRegistry
from apikey_mcp.watcher import ERROR_CAP, ERROR_FIRST, error_delay
from tests.conftest import KEY, wait_until
from tests.ledger.conftest import STORES, database_url, make_store
from tests.server.conftest import call, local_ledger, settings_for
from tests.server.test_watching import TASK_GETS, ManualTime

WRONG_KEY = "sk-rotated-away-0000000000"


@pytest.fixture
def time_() -> ManualTime:
    return ManualTime()


@pytest.mark.parametrize(("errors", "low", "high"), [(1, 0.5, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (5, 4.0, 8.0),
                                                     (7, 7.5, 15.0), (40, 7.5, 15.0)])  # fmt: skip
def test_the_wait_after_gateway_errors_doubles_with_jitter_up_to_a_cap(errors: int, low: float, high: float) -> None:
    rng = random.Random(3)
    waits = [error_delay(errors, rng) for _ in range(50)]
    assert all(low <= w <= high for w in waits) and max(waits) <= ERROR_CAP
    assert error_delay(1) == ERROR_FIRST


async def _sleeping_after(time_: ManualTime, step: float) -> None:
    """Move the clock on; if that woke the watcher, wait until it is asleep again (or has stopped)."""
    naps, due = len(time_.naps), any(deadline <= time_.now + step + 1e-9 for deadline, _ in time_._sleepers)
    time_.advance(step)
    if due:
        await wait_until(lambda: (len(time_.naps) > naps and time_.sleeping == 1) or time_.sleeping == 0, seconds=5)


async def test_a_resumed_task_with_a_wrong_key_backs_off_instead_of_polling_in_a_tight_loop(
    sandbox_server: SandboxServer, held: Sandbox, time_: ManualTime, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: restarted with a rotated key, a resumed task was polled ~800 times a second (all 401) and
    logged as often. Now: polls back off to at most one per ERROR_CAP seconds, one warning a minute."""
    caplog.set_level(logging.DEBUG, logger="apikey_mcp.watcher")
    async with GatewayClient(sandbox_server.url, WRONG_KEY) as client:
        registry = TaskRegistry(client, await local_ledger(1000), sleep=time_.sleep, clock=time_.clock)
        async with registry.running():
            await registry.track(Task(task_id="task_resumed", status="pending"), "image", None, confirmed=False)
            await wait_until(lambda: time_.sleeping == 1, seconds=5)  # asleep after its first 401
            for _ in range(600):  # two minutes of the watcher's time, a fifth of a second at a time
                await _sleeping_after(time_, 0.2)
    polls = held.requests[TASK_GETS]
    assert 2 <= polls <= 120 / (ERROR_CAP / 2) + 8, f"{polls} polls in two minutes"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "task_resumed" in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one a minute
    assert all(WRONG_KEY not in r.getMessage() for r in caplog.records)


async def test_a_task_the_gateway_forgot_is_lost_after_a_minute_of_404s_and_keeps_its_hold(
    sandbox_server: SandboxServer, held: Sandbox, time_: ManualTime
) -> None:
    store = MemoryLedgerStore()
    settings = settings_for(sandbox_server, poll_interval=1.0, max_poll_interval=5.0)
    server = build_server(settings, store=store, poll_sleep=time_.sleep, poll_clock=time_.clock)
    async with Client(server) as client:
        created = await call(client, "generate_image", prompt="forgotten", model="flux-schnell")
        task_id = created["task_id"]
        await wait_until(lambda: time_.sleeping == 1)
        held.forget_tasks()
        await _sleeping_after(time_, 30)  # one 404, half a minute of them: nothing is lost yet
        assert await store.reservations(lost_only=True) == []
        missing = await call(client, "poll_task", task_id=task_id, wait_seconds=0)
        for _ in range(60):
            await _sleeping_after(time_, 1)
        await wait_until(lambda: store.reservations(lost_only=True))
        polled = await call(client, "poll_task", task_id=task_id, wait_seconds=5)
        budget = await call(client, "budget_status")
    (lost,) = await store.reservations(lost_only=True)
    assert lost.task_id == task_id and lost.lost_at is not None
    assert polled["status"] == "lost" and "apikey-mcp admin close" in polled["next_step"]
    assert lost.id in polled["next_step"]
    assert budget["reserved"] == created["credits_reserved"]  # fail closed: still counted
    assert missing["status"] == "pending" and "404" in missing["next_step"]  # not "no such task"


async def test_one_stray_404_loses_nothing(sandbox_server: SandboxServer, held: Sandbox, time_: ManualTime) -> None:
    async with GatewayClient(sandbox_server.url, KEY) as client:
        created = await client.generate_image(ImageRequest(model="flux-schnell", prompt="back again"))
        registry = TaskRegistry(client, await local_ledger(1000), sleep=time_.sleep, clock=time_.clock)
        async with registry.running():
            tracked = await registry.track(created, "image", None)
            await wait_until(lambda: time_.sleeping == 1)
            held.forget_tasks()
            await _sleeping_after(time_, 5)  # a 404
            held.tasks.update(held.forgotten)  # the gateway knows it again
            for _ in range(70):
                await _sleeping_after(time_, 1)
    assert tracked.lost_at is None and tracked.missing_since is None and not tracked.task.is_terminal


async def _poll_until_lost(time_: ManualTime, store: LedgerStore) -> None:
    """Move the watcher's clock on, one poll at a time, until a forgotten task is marked lost: a minute of 404s,
    each at most ERROR_CAP after the one before."""

    async def asked_again_or_lost(naps: int) -> bool:
        return (len(time_.naps) > naps and time_.sleeping == 1) or bool(await store.reservations(lost_only=True))

    for _ in range(20):
        naps = len(time_.naps)
        time_.advance(ERROR_CAP)  # past the watcher's nap, whatever it is: it asks once
        await wait_until(functools.partial(asked_again_or_lost, naps))
        if await store.reservations(lost_only=True):
            return
    raise AssertionError("the task was never marked lost")


@pytest.mark.parametrize("store_kind", STORES)
async def test_a_task_created_twice_that_the_gateway_forgot_is_lost_with_both_holds(
    sandbox_server: SandboxServer,
    held: Sandbox,
    time_: ManualTime,
    store_kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (bbf5674): a gateway that answers a second create with the task it gave the first (the agent
    created again, thinking the first answer lost) leaves one task holding two reservations. When the gateway
    then forgot the task, only the first hold was marked lost: the other stayed counted but unlisted by
    `admin reservations --lost`, so the operator could not find it to close. Both are lost now, in every store."""
    if store_kind == "postgres":
        database_url()
    # The sandbox gives every create the same task id: a gateway answering a create with a task it gave before.
    monkeypatch.setattr(sandbox_engine, "secrets", SimpleNamespace(token_hex=lambda n: "d" * 2 * n))
    settings = settings_for(sandbox_server, poll_interval=1.0, max_poll_interval=5.0)
    async with make_store(store_kind, tmp_path) as store:
        server = build_server(settings, store=store, poll_sleep=time_.sleep, poll_clock=time_.clock)
        async with Client(server) as client:
            first = await call(client, "generate_image", prompt="a fox", model="flux-schnell")
            again = await call(client, "generate_image", prompt="a fox, again", model="flux-schnell")
            assert again["task_id"] == first["task_id"]
            holds = {r.id for r in await store.reservations(open_only=True)}
            assert len(holds) == 2 and {r.task_id for r in await store.reservations()} == {first["task_id"]}
            await wait_until(lambda: time_.sleeping == 1)  # one watcher for the one task
            held.forget_tasks()

            await _poll_until_lost(time_, store)

            async def both_lost() -> bool:
                return {r.id for r in await store.reservations(lost_only=True)} == holds

            with contextlib.suppress(TimeoutError):  # the assertion below says what is missing
                await wait_until(both_lost, seconds=10)
            lost = await store.reservations(lost_only=True)
            polled = await call(client, "poll_task", task_id=first["task_id"], wait_seconds=0)
            budget = await call(client, "budget_status")
        assert {r.id for r in lost} == holds, f"lost: {[r.id for r in lost]}, holds of the task: {sorted(holds)}"
        assert all(r.state == ReservationState.RESERVED and r.lost_at is not None for r in lost)  # none released
        assert budget["reserved"] == first["credits_reserved"] + again["credits_reserved"]  # both stay counted
        assert polled["status"] == "lost"
        total = first["credits_reserved"] + again["credits_reserved"]
        assert f"its {total} reserved credits (2 holds)" in polled["next_step"]  # the agent is told of both
        assert all(rid in polled["next_step"] for rid in holds)
        lines = [(e.reservation_id, e.model) for e in await store.history() if e.kind == "lost"]
        assert sorted(lines) == sorted((rid, "flux-schnell") for rid in holds)
    if store_kind == "sqlite":  # what the operator runs
        (state_file,) = tmp_path.glob("*.sqlite3")
        admin = [sys.executable, "-m", "apikey_mcp", "admin", "--state-file", str(state_file)]
        listed = await anyio.run_process([*admin, "reservations", "--lost", "--json"], check=True)
        assert {row["id"] for row in json.loads(listed.stdout)} == holds
